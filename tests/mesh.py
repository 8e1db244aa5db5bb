"""The in-process mesh these tests run: :class:`shared.testing.InProcessMesh` with this project's broker.

``shared`` names no service, so its test mesh is given a broker; this is the one place the tests
give it ours, and every test builds its mesh from here with the same arguments as before.
"""

from __future__ import annotations

from pathlib import Path

from services.broker import Broker
from shared import DEFAULT_CONFIG_PATH, load_config, testing

__all__ = ["PROJECT_IDENTITIES", "InProcessMesh"]

#: The identities of this project's mesh: what its mesh.toml declares, and the operator tool.
PROJECT_IDENTITIES = {**load_config(DEFAULT_CONFIG_PATH).identities(), "meshctl": "operator"}


class InProcessMesh(testing.InProcessMesh):
    """:class:`shared.testing.InProcessMesh` running :class:`services.broker.Broker`."""

    def __init__(self, root: Path, config_text: str = "", identities: dict[str, str] | None = None) -> None:
        super().__init__(root, config_text, identities if identities is not None else dict(PROJECT_IDENTITIES),
                         broker=Broker)

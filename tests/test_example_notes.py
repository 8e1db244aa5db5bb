"""The example of docs/services.md, tested the two ways that page teaches: one handler called with a
fake mesh client, and the whole service in a real in-process mesh with real storage. (The same
file joins a real supervisord mesh with ``meshctl service add`` in tests/test_services_e2e.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared import BadRequest
from shared.run import load_entry
from shared.testing import call_handler

from .processes import REPO
from .storage_rig import CONFIG, storage_rig

ENTRY = f"{REPO}/examples/notes/notes.py:Notes"


class FakeMesh:
    """Stands in for the service's mesh client: storage as a dict, every call remembered."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.kv: dict[bytes, bytes] = {}

    async def call(self, target: str, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        self.calls.append((target, body))
        key = body["key"]
        if target == "storage.kv.put":
            self.kv[key] = body["value"]
            return {"stored": True}
        return {"found": key in self.kv, "value": self.kv.get(key)}


async def test_a_handler_called_with_a_fake_mesh() -> None:
    notes = load_entry(ENTRY)()
    notes.mesh = fake = FakeMesh()
    assert await call_handler(notes, "put", {"title": "shopping", "text": "oat milk"}, caller="meshctl") == \
        {"saved": "shopping"}
    assert fake.calls == [("storage.kv.put", {"category": "notes", "key": b"meshctl/shopping",
                                              "value": b"oat milk"})]
    assert await call_handler(notes, "get", {"title": "shopping"}, caller="meshctl") == \
        {"title": "shopping", "text": "oat milk"}
    assert (await call_handler(notes, "get", {"title": "shopping"}, caller="someone"))["text"] is None
    with pytest.raises(BadRequest):
        await call_handler(notes, "put", {"title": "x" * 201})  # the schema is checked as on the wire


async def test_the_service_in_a_real_mesh_with_real_storage(tmp_path: Path) -> None:
    declaration = f'\n[services.notes]\nentry = "{ENTRY}"\nexpose = {{ "*" = ["operator"] }}\n'
    async with storage_rig(tmp_path, config=CONFIG + declaration) as rig:
        await rig.mesh.start_service(load_entry(ENTRY)())
        reply = await rig.operator.call("notes.put", {"title": "shopping", "text": "oat milk"}, timeout=10)
        assert reply == {"saved": "shopping"}
        assert await rig.operator.call("notes.get", {"title": "shopping"}, timeout=10) == \
            {"title": "shopping", "text": "oat milk"}
        # Storage keeps it under the notes service's own namespace: the operator cannot read it directly.
        direct = await rig.operator.call("storage.kv.get", {"category": "notes", "key": b"meshctl/shopping"},
                                         timeout=10)
        assert direct["found"] is False

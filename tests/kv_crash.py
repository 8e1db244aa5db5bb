"""Run a keyvault password change and die (``os._exit``, like kill -9) at one step.

``python -m tests.kv_crash HOME STEP OLD NEW``: used by test_keyvault to check that
a crash at any step leaves exactly one password valid and every data key intact.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from services.keyvault.service import Keyvault
from shared import MeshHome, config_path, load_config
from shared.testing import call_handler


def main() -> None:
    home_path, step, old, new = sys.argv[1:5]
    home = MeshHome(Path(home_path))

    def checkpoint(reached: str) -> None:
        if reached == step:
            os._exit(137)  # no cleanup, no flush: what kill -9 leaves behind

    async def change() -> None:
        vault = Keyvault(home, load_config(config_path(home.root)), checkpoint=checkpoint)
        await vault.on_start()
        await call_handler(vault, "passwd", {"old_password": old, "new_password": new}, timeout=60)

    asyncio.run(change())
    os._exit(0 if step == "none" else 3)  # 3: the step was never reached


if __name__ == "__main__":
    main()

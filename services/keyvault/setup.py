"""First launch: create the key hierarchy and put the master key in the keystore.

Run by ``meshctl init`` before the mesh starts (keyvault need not be running).
"""

from __future__ import annotations

from shared import Conflict, MeshConfig, MeshHome
from shared.crypto import wipe

from . import store
from .keystore import choose_keystore


def initialise(home: MeshHome, config: MeshConfig, password: bytearray) -> tuple[str, str | None]:
    """Derive the master key from ``password`` (Argon2id, the ``master`` profile: slow by
    design), write the state and store the master key. Returns the keystore's name and its
    warning, if any. Refuses an initialised home (:class:`Conflict`). ``password`` is wiped.

    The state is written before the keystore: a crash between the two leaves the mesh
    sealed, to be unlocked with the password, never with keys that nothing can open.
    """
    try:
        if store.load(home) is not None:
            raise Conflict("keyvault is already initialised in this home")
        state, master = store.create(password, config.argon2.master)
    finally:
        wipe(password)
    try:
        keystore, warning = choose_keystore(config, home, state.mesh_id)
        store.save(home, state)
        keystore.put(master)
    finally:
        wipe(master)
    return keystore.name, warning

"""For a service that holds keys fetched from another (its *key source*): the loops and states.

- :func:`keep_unsealed` retries the unseal with doubling back-off while the mesh is sealed, and runs
  a periodic task while it is not; setting its ``wake`` event ends any wait at once;
- :func:`watch_key_source` subscribes to ``security.`` and follows them in a task (a refusal is
  logged with the fix);
- :func:`follow_events_of` hands the events one identity published (the key source's ``security.*``
  announcements) to a handler, ignoring anyone else's;
- :func:`without_keys` turns a failed key fetch into the service's :class:`~shared.Readiness`
  (``sealed`` with :data:`LOCKED_REASON`, or ``failed`` naming the key source and its answer).

The key source is named by the caller (``"keyvault"`` in this mesh). The code is in
:mod:`shared._keeper`.

A service that keeps a SQLCipher database of its own under a purpose key uses
:class:`KeyedDatabase` (open, re-key, transactions) with :func:`open_current` and
:func:`rekey_current` (the database follows key rotations; code in :mod:`shared._keyed_db`), and
:class:`DatabaseKeeper` to open it at unseal, re-key it on rotation and close it on seal (code in
:mod:`shared._db_keeper`).
"""

from __future__ import annotations

from ._db_keeper import DatabaseKeeper
from ._keeper import LOCKED_REASON, follow_events_of, keep_unsealed, watch_key_source, without_keys
from ._keyed_db import KeyedDatabase, open_current, rekey_current

__all__ = ["LOCKED_REASON", "DatabaseKeeper", "KeyedDatabase", "follow_events_of", "keep_unsealed", "open_current",
           "rekey_current", "watch_key_source", "without_keys"]

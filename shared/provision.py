"""Provisioning a mesh home: a CURVE keypair for each process and the broker's allow-list.

- :func:`provision` creates the broker's keypair and one per identity of a name-to-role map
  (:data:`MESH_IDENTITIES` by default, the processes of this project's mesh), and admits each;
- :func:`add_identity` creates and admits one more.

Secret files are created 0600 with ``O_EXCL``: provisioning never overwrites a key. The code is in
:mod:`shared._provision`.
"""

from __future__ import annotations

from ._provision import MESH_IDENTITIES, add_identity, provision

__all__ = ["MESH_IDENTITIES", "add_identity", "provision"]

"""Provisioning a mesh home: a CURVE keypair for each process and the broker's allow-list.

- :func:`provision` creates the broker's keypair and one per identity of a name-to-role map
  (a mesh's own: :meth:`shared.MeshConfig.identities`, from its ``[services.*]`` declarations),
  and admits each;
- :func:`add_identity` creates and admits one more;
- :func:`remove_identity` deletes one's keypair and certificates (``meshctl service remove``).

Secret files are created 0600 with ``O_EXCL``: provisioning never overwrites a key. The code is in
:mod:`shared._provision`.
"""

from __future__ import annotations

from ._provision import add_identity, provision, remove_identity

__all__ = ["add_identity", "provision", "remove_identity"]

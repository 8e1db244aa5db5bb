"""Provisioning a mesh home: a keypair per process and the broker's allow-list."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ._certs import KeyPair, generate, save_keypair, save_public
from ._errors import CertificateError
from ._home import MeshHome

#: Every process of the mesh and the role its certificate carries (the broker has none:
#: it is the CURVE server and is pinned by its public key, never admitted by ZAP).
#: ``supervisor-events`` is supervisord's event listener (services/supervisor_events).
MESH_IDENTITIES: Final[Mapping[str, str]] = MappingProxyType({
    "keyvault": "service", "authn": "service", "authz": "service", "storage": "service",
    "audit": "service", "pairing": "service", "plugin-host": "service",
    "supervisor-events": "service", "meshctl": "operator",
})


def provision(home: MeshHome, identities: Mapping[str, str] = MESH_IDENTITIES) -> dict[str, KeyPair]:
    """Create the broker's keypair and one per identity, and allow each identity.

    Secret files are created 0600 with ``O_EXCL``: provisioning never overwrites a
    key. Returns the keypairs by name (the broker's under ``"broker"``).
    """
    home.ensure()
    (home.certs / "allowed").mkdir(mode=0o700, exist_ok=True)
    pairs: dict[str, KeyPair] = {}
    broker = generate("broker", "service")
    save_keypair(broker, home.keys)
    pairs["broker"] = broker
    for name, role in identities.items():
        add_identity(home, name, role, pairs)
    return pairs


def add_identity(home: MeshHome, name: str, role: str, pairs: dict[str, KeyPair] | None = None) -> KeyPair:
    """Create one more identity's keypair in ``home/keys`` and put it on the allow-list."""
    pair = generate(name, role)
    save_keypair(pair, home.keys)
    save_public(pair.certificate, home.certs / "allowed" / f"{name}.key")
    if pairs is not None:
        pairs[name] = pair
    return pair


def missing_keypair(home: MeshHome, name: str) -> CertificateError:
    """The error for identity ``name`` having no secret key file: its full path, and the
    command that creates it (``meshctl init`` for the mesh's own processes; for any other
    identity, the operator creates a keypair and admits its public key)."""
    path = home.secret_key_path(name)
    if name == "broker" or name in MESH_IDENTITIES:
        return CertificateError(f"no keypair for {name!r} at {path}: create the mesh's keys with `meshctl init`")
    return CertificateError(f"no keypair for {name!r} at {path}: create one and put its public key "
                            f"on the allow-list (meshctl certs accept)")

"""Provisioning a mesh home: a keypair per process and the broker's allow-list."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ._certs import KeyPair, generate, load_certificate, save_keypair, save_public
from ._config import MeshConfig
from ._declarations import BROKER
from ._errors import CertificateError
from ._home import MeshHome


def provision(home: MeshHome, identities: Mapping[str, str]) -> dict[str, KeyPair]:
    """Create the broker's keypair and one per identity (name to role), and allow each identity.
    The mesh's own come from its declarations (:meth:`~shared.MeshConfig.identities`).

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


def missing_keypair(home: MeshHome, name: str, config: MeshConfig) -> CertificateError:
    """The error for identity ``name`` having no secret key file: its full path, and the command
    that creates it: ``meshctl init`` for the broker, every identity ``config`` declares and the
    operator tool; ``meshctl service add`` for a service the mesh does not declare yet."""
    path = home.secret_key_path(name)
    init = "`meshctl init` creates the keys of the broker, every declared service and meshctl"
    if name == BROKER or name in config.identities():
        return CertificateError(f"no keypair for {name!r} at {path}: {init} (`meshctl init --if-needed` those "
                                "of a service declared after init)")
    return CertificateError(f"no keypair for {name!r} at {path}: {init}; a service the mesh does not "
                            f"declare yet is added with `meshctl service add {name} --entry ENTRY` "
                            "(docs/services.md), which creates its keypair and admits it")


def remove_identity(home: MeshHome, name: str) -> list[Path]:
    """Delete identity ``name``'s keypair and its key's certificate on the allow-list, and return
    what was deleted. A revocation stays: it is the record that this key must never be let in
    again (a copy of the secret key could survive the files deleted here).

    The allow-list entries go first and the secret key last, so an interrupted removal leaves a key
    that is refused rather than a key that is admitted with nothing to show for it. A running
    connection is not cut by deleting files alone: revoke the key through the broker first
    (``mesh.certs.revoke``), as ``meshctl service remove`` does. Raises
    :class:`~shared.CertificateError` when ``name`` has no public key in ``home/keys``.
    """
    public = load_certificate(home.public_key_path(name)).public_key
    removed: list[Path] = []
    directory = home.certs / "allowed"
    if directory.is_dir():
        for path in sorted(directory.glob("*.key")):
            try:
                if load_certificate(path).public_key != public:
                    continue
            except CertificateError:
                continue  # not a certificate of this key: certs reload reports it
            path.unlink()
            removed.append(path)
    for path in (home.secret_key_path(name), home.public_key_path(name)):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed

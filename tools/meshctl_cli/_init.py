"""``meshctl init``: every keypair, the allow-list, supervisord's credentials and the master key.

Order matters. Everything that can be refused (an initialised home, a running
mesh, a bad mesh.toml, a weak password) is refused before anything is written.
Then: keypairs, credentials, the keyvault's key hierarchy (Argon2id: seconds),
and last the marker ``curvemesh-home.json``; a home without it was never
initialised, or init was interrupted, and only ``--force`` starts it over.

The master password comes from the terminal (asked twice), from
``--password-file``, or, with neither, is generated: a recovery passphrase shown
once on stdout (``vault operator init`` style), the only copy there will ever be.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from services.keyvault import setup as keyvault_setup
from services.keyvault import store as keyvault_store
from services.keyvault.keystore import choose_keystore
from shared import Argon2Profile, ConfigError, MeshConfig, MeshError, MeshHome
from shared.files import write_exclusive
from shared.provision import add_identity, provision

from . import _intake
from ._mesh import OPERATOR, home_config
from ._output import CliError
from ._security import SESSION_FILE
from ._supervisor import create_credentials, credentials_path, home_processes

T = TypeVar("T")

#: Written last by ``init``: a home without it was never initialised, or init was interrupted.
MARKER: Final = "curvemesh-home.json"


def is_initialised(home: MeshHome) -> bool:
    return (home.root / MARKER).is_file()


def _marker(home: MeshHome) -> dict[str, Any] | None:
    try:
        info = json.loads((home.root / MARKER).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _write_marker(home: MeshHome, info: dict[str, Any]) -> None:
    """Write the marker atomically (a new file, then a rename over the old one)."""
    tmp = home.root / f"{MARKER}.tmp"
    tmp.unlink(missing_ok=True)
    write_exclusive(tmp, json.dumps(info).encode(), 0o600)
    os.replace(tmp, home.root / MARKER)


def _add_declared(home: MeshHome, config: MeshConfig) -> list[str]:
    """Create and admit the keypair of every declared identity that has none yet (a declaration
    written by hand into mesh.d/ after init); return their names. A half-present keypair is left
    alone: the process's start names it."""
    added = []
    for name, role in config.identities().items():
        if not home.secret_key_path(name).exists() and not home.public_key_path(name).exists():
            add_identity(home, name, role)
            added.append(name)
    return added


def profile_text(profile: Argon2Profile) -> str:
    """``Argon2id, 1 GiB, 3 passes, 4 lanes``."""
    kib = profile.memory_kib
    size = f"{kib >> 20} GiB" if kib % (1 << 20) == 0 else f"{kib >> 10} MiB" if kib % 1024 == 0 else f"{kib} KiB"
    return f"Argon2id, {size}, {profile.iterations} pass{'es' * (profile.iterations != 1)}, " \
           f"{profile.parallelism} lane{'s' * (profile.parallelism != 1)}"


def _wipe(home: MeshHome) -> list[str]:
    """Remove every key, certificate and credential of the home (``init --force``)."""
    (home.root / MARKER).unlink(missing_ok=True)  # first: an interrupted wipe is not "initialised".
    removed = []
    for directory in (home.keys, *(home.certs / s for s in ("allowed", "revoked", "pending", "rejected"))):
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.is_file() or path.is_symlink():
                    path.unlink()
                    removed.append(str(path.relative_to(home.root)))
    return removed


def _reset_keyvault(home: MeshHome, config: MeshConfig) -> list[str]:
    """Forget the old key hierarchy (``init --force``): its master key in the keystore, its
    state in ``data/keyvault/`` and meshctl's session. The keyvault audit spool stays:
    history is not rewritten by a re-init."""
    removed: list[str] = []
    try:
        state = keyvault_store.load(home)
    except MeshError:
        state = None  # corrupt: nothing to look up in the keyring; the file goes below.
    if state is not None:
        try:
            choose_keystore(config, home, state.mesh_id)[0].delete()
        except Exception as exc:  # noqa: BLE001 - a keyring that fails here must not block a re-init.
            print(f"meshctl: could not remove the old master key from the keystore ({type(exc).__name__}); "
                  "it opens nothing once the state is gone", file=sys.stderr)
    directory = keyvault_store.state_path(home).parent
    if directory.is_dir():
        removed += [str(p.relative_to(home.root)) for p in sorted(directory.iterdir())]
        shutil.rmtree(directory)
    session = home.run / SESSION_FILE
    if session.exists():
        session.unlink()
        removed.append(str(session.relative_to(home.root)))
    return removed


def _master_password(password_file: str | None) -> tuple[bytearray, bool]:
    """The new master password and whether it was generated (no terminal, no file)."""
    if password_file is not None or _intake.on_terminal():
        return _intake.ask_new(password_file, "master password"), False
    return _intake.recovery_passphrase(), True


def _initialise_keyvault(home: MeshHome, config: MeshConfig, password: bytearray) -> dict[str, Any]:
    """Derive the master key, write keyvault's state, keep the key in the keystore.
    ``password`` is wiped, whatever happens."""
    profile = config.argon2.master
    print(f"deriving the master key ({profile_text(profile)})...", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        keystore, warning = keyvault_setup.initialise(home, config, password)
    except MeshError as exc:
        raise CliError(f"keyvault: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - a keyring failure: name it, never echo its text (may quote input).
        raise CliError(f"could not keep the master key in the keystore ({type(exc).__name__}); "
                       "`meshctl init --force` starts over") from None
    finally:
        _intake.wipe(password)
    elapsed = time.monotonic() - started
    starts_sealed = config.keyvault.keystore == "password"
    if starts_sealed:
        print(f"master key derived in {elapsed:.1f} s and not stored (keystore = password): the mesh starts "
              "sealed; after every `meshctl up`, run `meshctl security unlock`", file=sys.stderr, flush=True)
    else:
        print(f"master key derived and stored in {elapsed:.1f} s", file=sys.stderr, flush=True)
    state = keyvault_store.load(home)
    return {"mesh_id": state.mesh_id, "keystore": keystore, "keystore_warning": warning,
            "starts_sealed": starts_sealed,
            "argon2": {"memory_kib": profile.memory_kib, "iterations": profile.iterations,
                       "parallelism": profile.parallelism}, "derive_s": round(elapsed, 2),
            "test_profiles": config.argon2.test_profiles}


def _with_password(home: MeshHome, config: MeshConfig, password_file: str | None,
                   before: Callable[[], T]) -> tuple[dict[str, Any], str | None, T]:
    """Take the master password, run ``before()`` (writes keys), then set up keyvault.
    Returns keyvault's report, the recovery passphrase if one was generated, and what
    ``before()`` returned."""
    password, generated = _master_password(password_file)
    try:
        # The one copy meshctl prints; made before initialise() wipes the buffer.
        shown = _intake.wire(password) if generated else None
        done = before()
        return _initialise_keyvault(home, config, password), shown, done
    finally:
        _intake.wipe(password)


def _add_keyvault(home: MeshHome, config: MeshConfig, info: dict[str, Any], password_file: str | None,
                  if_needed: bool) -> dict[str, Any]:
    """A home initialised before keyvault had a key hierarchy: give it one, keys untouched."""
    running = home_processes(home)
    if running:
        message = (f"{home.root} is initialised but its keyvault is not: `meshctl down`, then `meshctl init` "
                   "sets up the master key")
        if if_needed:
            print(f"meshctl: {message}", file=sys.stderr)
            return {"home": str(home.root), "created": False, "reason": "already initialised (keyvault is not)"}
        raise CliError(message)
    vault, shown, _ = _with_password(home, config, password_file, lambda: None)
    _write_marker(home, {**info, "keyvault": {"mesh_id": vault["mesh_id"], "created": time.time()}})
    return {"home": str(home.root), "created": True, "replaced": 0, "identities": [], "keyvault": vault,
            "recovery_passphrase": shown, "keyvault_only": True}


def init(home: MeshHome, *, force: bool, if_needed: bool, password_file: str | None = None) -> dict[str, Any]:
    """Create every keypair, the allow-list, the supervisord credentials and the master key.

    Refuses an initialised home (or one a previous init left half done) unless
    ``force``, which first makes sure nothing of the home runs and then replaces
    every key, the keyvault's included. With ``if_needed`` an initialised home is
    left alone and reported as such. A home initialised before keyvault existed
    gets its master key and nothing else changes.
    """
    info = _marker(home) if is_initialised(home) else None
    vault_exists = keyvault_store.state_path(home).exists()
    legacy = info is not None and "keyvault" not in info and not vault_exists
    if is_initialised(home) and if_needed and not force and not legacy:
        return {"home": str(home.root), "created": False, "reason": "already initialised",
                "added_identities": _add_declared(home, home_config(home))}
    try:
        home.broker_endpoint  # noqa: B018 - raises if the home is too deep for a unix socket path
    except ConfigError as exc:
        raise CliError(exc.message) from None
    home.ensure()
    config = home_config(home)
    if legacy and not force:
        assert info is not None
        return _add_keyvault(home, config, info, password_file, if_needed)
    if not force:
        if is_initialised(home):
            raise CliError(f"{home.root} is already initialised; `meshctl init --force` replaces every key, "
                           "certificate and credential in it and the master key (stop the mesh first)")
        if any(home.keys.iterdir()) or vault_exists:
            raise CliError(f"{home.root} holds keys but was never completely initialised (interrupted?); "
                           "`meshctl init --force` starts it over")
    elif running := home_processes(home):
        raise CliError(f"the mesh in {home.root} is running ({len(running)} processes): `meshctl down` first")

    def keys() -> tuple[list[str], dict[str, Any], str]:
        removed = [*_wipe(home), *_reset_keyvault(home, config)] if force else []
        # Every declared identity (the project's services and any a fragment declares), and ours.
        pairs = provision(home, {**config.identities(), OPERATOR: "operator"})
        return removed, pairs, create_credentials(home).username

    vault, shown, (removed, pairs, user) = _with_password(home, config, password_file, keys)
    _write_marker(home, {"version": 1, "created": time.time(), "identities": sorted(pairs),
                         "keyvault": {"mesh_id": vault["mesh_id"], "created": time.time()}})
    return {
        "home": str(home.root), "created": True, "replaced": len(removed),
        "identities": [{"name": name, "role": pair.certificate.role if name != "broker" else "broker",
                        "public_key": pair.certificate.public_key.decode(),
                        "fingerprint": pair.certificate.fingerprint} for name, pair in sorted(pairs.items())],
        "operator_certificate": str(home.secret_key_path(OPERATOR)),
        "supervisord_credentials": str(credentials_path(home)), "supervisord_user": user,
        "keyvault": vault, "recovery_passphrase": shown,
    }

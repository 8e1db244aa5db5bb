"""``meshctl plugins keygen`` and ``meshctl plugins sign``: the publisher's side of signed plugins.

Both run on the publisher's machine and need neither a mesh home nor a mesh (``_cli`` dispatches
them before the home is resolved). ``keygen KEYFILE --id KEY_ID`` writes a new Ed25519 signing key
(0600, never over an existing file) and prints the ``[plugins.publishers]`` line a mesh adds to
trust it; ``sign DIR --key KEYFILE --id KEY_ID`` signs a package directory and prints its content
hash, the one ``meshctl plugins install`` shows the operator. The package format and the signing
are :mod:`shared.plugins`'; it is imported only here, when one of the two runs.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Final

from shared import MeshError

from ._output import CliError, emit

#: A TOML bare key: written as is; any other key id (``acme.team``) is written quoted.
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_EXISTS: Final = ("exists: a publisher key is never written over another file (packages signed with it would no "
                  "longer verify); choose a new KEYFILE")


def publishers_entry(key_id: str, public_key: str) -> str:
    """The lines a mesh's mesh.toml takes to trust ``public_key`` as the publisher ``key_id``."""
    key = key_id if _BARE_KEY.fullmatch(key_id) else json.dumps(key_id)
    return f"[plugins.publishers]\n{key} = {json.dumps(public_key)}"


def _needs(args: argparse.Namespace, what: str, *flags: tuple[str, Any]) -> None:
    missing = [flag for flag, value in flags if not value]
    if missing:
        raise CliError(f"plugins {args.action} needs {', '.join(missing)} ({what})", status=2)


def _refused(exc: MeshError) -> CliError:
    """shared.plugins' refusal (a package: ``PackageRefused`` and its reason; a key file:
    ``CertificateError``) as the one-line error."""
    return CliError(exc.message, kind=getattr(exc, "reason", None) or exc.code.lower())


def _keygen(args: argparse.Namespace) -> int:
    _needs(args, "e.g. plugins keygen ~/acme-publisher.key --id acme", ("KEYFILE", args.target),
           ("--id KEY_ID", args.key_id))
    path = Path(args.target).expanduser().absolute()
    if path.exists() or path.is_symlink():
        raise CliError(f"{path} {_EXISTS}", kind="exists")
    from shared.plugins import KEY_ID_RE, generate_publisher_key

    if not KEY_ID_RE.fullmatch(args.key_id):
        raise CliError(f"--id {args.key_id!r} is not a publisher key id (1-64 of a-z 0-9 . _ -, starting with a "
                       "letter or digit)", status=2)
    try:
        public_key = generate_publisher_key(path)
    except MeshError as exc:
        raise _refused(exc) from None
    entry = publishers_entry(args.key_id, public_key)
    result = {"key_file": str(path), "key_id": args.key_id, "public_key": public_key, "mesh_toml": entry}
    emit(args.json, result, "\n".join([
        f"wrote the publisher key {path} (0600): keep it secret and backed up; whoever holds it signs plugins "
        f"as {args.key_id}",
        "a mesh trusts its plugins once its mesh.toml has:", "", entry]))
    return 0


def _sign(args: argparse.Namespace) -> int:
    _needs(args, "e.g. plugins sign ./weather --key ~/acme-publisher.key --id acme", ("DIR", args.target),
           ("--key KEYFILE", args.key), ("--id KEY_ID", args.key_id))
    directory = Path(args.target).expanduser().absolute()
    if not directory.is_dir():
        raise CliError(f"{args.target}: not a package directory", status=2)
    key_file = Path(args.key).expanduser().absolute()
    if not key_file.is_file():
        raise CliError(f"{args.key}: no such key file (plugins keygen writes one)", status=2)
    from shared.plugins import load_publisher_key, sign_package

    try:
        content_hash = sign_package(directory, load_publisher_key(key_file), args.key_id)
    except MeshError as exc:
        raise _refused(exc) from None
    except OSError as exc:
        raise CliError(f"{exc.filename or directory}: {exc.strerror or exc}") from None
    result = {"directory": str(directory), "key_id": args.key_id, "content_hash": content_hash}
    emit(args.json, result, f"signed {args.target} as {args.key_id}: {content_hash}")
    return 0


def run_publish(args: argparse.Namespace) -> int:
    """``meshctl plugins keygen KEYFILE --id KEY_ID``, ``plugins sign DIR --key KEYFILE --id KEY_ID``."""
    return _keygen(args) if args.action == "keygen" else _sign(args)

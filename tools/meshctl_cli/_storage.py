"""``meshctl storage status|verify`` and ``meshctl backup create|verify|restore``.

Each is a call to ``storage.<method>`` as the operator identity, through the broker and its ACL.
Backups run as jobs in the storage service; meshctl polls ``storage.jobs`` and draws a progress line
on a terminal. Archives live in ``<home>/backups``: ``backup create --output F`` copies the new
archive to ``F`` as well, and ``backup verify|restore FILE`` copies ``FILE`` into that directory first
(storage never reads a path outside its home), then removes the copy when the job ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any, Final

from shared import MeshError, MeshHome
from shared.crypto import wipe

from . import _confirm, _intake
from ._audit import when
from ._mesh import connected
from ._output import CliError, emit, table

_TIMEOUT_S: Final = 30.0
_POLL_S: Final = 0.2
_JOB_MAX_S: Final = 6 * 3600.0   # a backup of a very large home still ends


def backups_dir(home: MeshHome) -> Path:
    path = home.root / "backups"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _copy_private(source: Path, target: Path) -> None:
    """Copy ``source`` to a new 0600 file ``target`` (O_EXCL: never over an existing file)."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with source.open("rb") as src, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _progress(job: dict[str, Any]) -> None:
    if not sys.stderr.isatty():
        return
    done, total = job.get("done") or 0, job.get("total") or 0
    share = f" {100 * done // total:3d}%" if total else ""
    print(f"\r{job['kind']}: {job['phase']}{share} ({done >> 20} of {total >> 20} MiB)   ", end="", file=sys.stderr,
          flush=True)


async def run_job(home: MeshHome, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """Start a storage job and follow it to the end; a failed job is a :class:`CliError`."""
    async with connected(home) as client:
        job_id = (await client.call(method, body, timeout=_TIMEOUT_S))["job"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _JOB_MAX_S
        while True:
            job: dict[str, Any] = await client.call("storage.jobs", {"job": job_id}, timeout=_TIMEOUT_S)
            _progress(job)
            if job["state"] != "running" or loop.time() > deadline:
                break
            await asyncio.sleep(_POLL_S)  # a polling interval, not a synchronisation
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if job["state"] == "failed":
        raise CliError(f"{job['kind']} failed: {job['error']}")
    if job["state"] == "running":
        raise CliError(f"{job['kind']} is still running after {_JOB_MAX_S:.0f} s; follow it with storage.jobs")
    result: dict[str, Any] = job["result"]
    return result


def _passphrase(path: str | None, *, new: bool) -> bytearray | None:
    if path is None:
        return None
    if new:
        return _intake.ask_new(path, "backup passphrase", "--passphrase-file")
    return _intake.read_password_file(path, "backup passphrase")


async def create(home: MeshHome, passphrase_file: str | None, output: str | None) -> dict[str, Any]:
    """``meshctl backup create``: a new archive in ``<home>/backups`` (and at ``output``)."""
    passphrase = _passphrase(passphrase_file, new=True)
    body: dict[str, Any] = {}
    try:
        if passphrase is not None:
            body["passphrase"] = _intake.wire(passphrase)
        result = await run_job(home, "storage.backup.create", body)
    finally:
        if passphrase is not None:
            wipe(passphrase)
    if output:
        try:
            _copy_private(Path(result["path"]), Path(output))
        except OSError as exc:
            raise CliError(f"the backup is at {result['path']}, but copying it to {output} failed: "
                           f"{exc.strerror}") from None
        result["output"] = str(Path(output).resolve())
    return result


async def open_archive(home: MeshHome, action: str, file: str, passphrase_file: str | None,
                       force: bool) -> dict[str, Any]:
    """``meshctl backup verify|restore FILE``: copy FILE in, run the job, remove the copy."""
    source = Path(file)
    if not source.is_file():
        raise CliError(f"{file}: no such archive file", status=2)
    directory = backups_dir(home)
    inside = source.resolve().parent == directory.resolve() and source.suffix == ".cmbak"
    name = source.name if inside else f"incoming-{secrets.token_hex(4)}.cmbak"
    if not inside:
        try:
            _copy_private(source, directory / name)
        except OSError as exc:
            raise CliError(f"cannot copy {file} into {directory}: {exc.strerror}") from None
    passphrase = _passphrase(passphrase_file, new=False)
    body: dict[str, Any] = {"archive": name, "force": force}
    try:
        if passphrase is not None:
            body["passphrase"] = _intake.wire(passphrase)
        return await run_job(home, f"storage.backup.{action}", body)
    finally:
        if passphrase is not None:
            wipe(passphrase)
        if not inside:
            with contextlib.suppress(OSError):
                (directory / name).unlink()


async def call(home: MeshHome, method: str) -> dict[str, Any]:
    async with connected(home) as client:
        result: dict[str, Any] = await client.call(method, timeout=600.0 if method == "storage.verify" else _TIMEOUT_S)
    return result


def list_backups(home: MeshHome) -> list[dict[str, Any]]:
    """``meshctl backup list``: every archive in ``<home>/backups`` with what its header says (time,
    sequence, mesh, which keys open it), read without any key and without the mesh. The header is
    authenticated only when an archive is opened: ``backup verify`` proves it."""
    from services.storage.archive.format import read_header  # late: only this command reads archives

    from ._init import is_initialised

    if not is_initialised(home):
        raise CliError(f"the mesh home {home.root} is not initialised: run `meshctl init` first",
                       kind="not_initialised")
    directory = home.root / "backups"
    rows = []
    for path in sorted(directory.glob("*.cmbak")) if directory.is_dir() else []:
        row: dict[str, Any] = {"file": path.name, "path": str(path), "bytes": None, "created": None,
                               "sequence": None, "mesh_id": None, "backup_key_version": None,
                               "passphrase": None, "problem": None}
        try:
            row["bytes"] = path.stat().st_size
            header = read_header(path)
        except OSError as exc:
            row["problem"] = f"cannot read it: {exc.strerror}"
        except MeshError as exc:  # DamagedError: not an archive, or its header is cut or malformed
            row["problem"] = exc.message
        else:
            row.update(created=header.created, sequence=header.sequence, mesh_id=header.mesh_id,
                       backup_key_version=header.backup_key_version, passphrase=header.has_passphrase)
        rows.append(row)
    rows.sort(key=lambda r: (r["sequence"] is None, r["sequence"] or 0, r["file"]))
    return rows


def backups_text(home: MeshHome, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f"no backups in {home.root / 'backups'}: `meshctl backup create` makes one"

    def opens(r: dict[str, Any]) -> str:
        keys = ([f"backups key v{r['backup_key_version']}"] if r["backup_key_version"] is not None else []) + (
            ["passphrase"] if r["passphrase"] else [])
        return " or ".join(keys) or "-"

    return table(["SEQUENCE", "CREATED", "SIZE", "OPENS WITH", "FILE"],
                 [[r["sequence"], when(r["created"]), _size(r["bytes"]),
                   opens(r) if r["problem"] is None else f"damaged: {r['problem']}", r["file"]] for r in rows])


def _size(count: int | None) -> str | None:
    if count is None:
        return None
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return None


def status_text(s: dict[str, Any]) -> str:
    lines = [f"storage: {s['state']}" + (f" ({s['problem']})" if s.get("problem") else "")]
    lines.append("key versions: " + ", ".join(f"{p} v{v}" for p, v in sorted(s["versions"].items())))
    for purpose, r in sorted((s.get("rotation") or {}).items()):
        share = f"{100 * r['done'] // r['total']}%" if r["total"] else "100%"
        lines.append(f"rotation {purpose} -> v{r['to_version']}: {r['state']} {r['done']}/{r['total']} ({share})"
                     + (f": {r['problem']}" if r.get("problem") else ""))
    backup = s.get("backup") or {}
    lines.append(f"newest backup: #{backup.get('sequence', 0)}" if backup.get("sequence") else "no backup made yet")
    if s.get("restoring"):
        lines.append(f"WARNING: a restore of {s['restoring']} did not finish: run the same restore again")
    return "\n".join(lines)



def run_storage(args: argparse.Namespace, home: MeshHome) -> int:
    """``meshctl storage status|verify``: verify exits 1 naming every damaged item."""
    if args.action == "status":
        result = asyncio.run(call(home, "storage.status"))
        emit(args.json, result, status_text(result))
        return 0
    result = asyncio.run(call(home, "storage.verify"))
    if result["ok"]:
        emit(args.json, result, f"storage verified: {', '.join(result['checked'])} intact ({result['seconds']} s)")
        return 0
    emit(args.json, result, table(["STORE", "PROBLEM"], [[p["store"], p["problem"]] for p in result["problems"]]))
    raise CliError(f"storage verification FAILED: {len(result['problems'])} problem(s)")


def run_backup(args: argparse.Namespace, home: MeshHome) -> int:
    """``meshctl backup list|create|verify|restore``."""
    if args.action == "list":
        if args.file or args.force or args.output or args.passphrase_file:
            raise CliError("backup list takes no FILE, --force, --output or --passphrase-file", status=2)
        rows = list_backups(home)
        emit(args.json, rows, backups_text(home, rows))
        return 0
    if args.action == "create":
        result = asyncio.run(create(home, args.passphrase_file, args.output))
        where = result.get("output") or result["path"]
        emit(args.json, result, f"backup #{result['sequence']} written to {where} ({result['bytes']} bytes)")
        return 0
    if not args.file:
        raise CliError(f"backup {args.action} needs the archive FILE", status=2)
    if args.action == "restore":
        if not Path(args.file).is_file():
            raise CliError(f"{args.file}: no such archive file", status=2)
        _confirm.confirm(args, f"restore {args.file} into the storage of the mesh in {home.root} (it must be "
                               "empty: a fresh home)" + (", even if it is older than the newest backup" if args.force
                                                         else ""))
    result = asyncio.run(open_archive(home, args.action, args.file, args.passphrase_file, args.force))
    # The file the operator named, not storage's name for its copy (incoming-*.cmbak).
    result.update(archive=Path(args.file).name, file=args.file, path=str(Path(args.file).resolve()))
    if args.action == "verify":
        emit(args.json, result, f"archive verified: {args.file}: backup #{result['sequence']}, "
                           f"{result['entries']} entries, {result['bytes']} bytes")
    else:
        note = " (a rollback, forced)" if result["rollback"] else ""
        emit(args.json, result, f"restored backup #{result['sequence']}{note}: {result['kv']} key-value entries, "
                           f"{result['records']} records, {result['analytics']} analytics databases, "
                           f"{result['files']} files")
    return 0

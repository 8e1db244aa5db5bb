"""``meshctl audit tail|verify|export`` and ``meshctl alerts [ack ID]``.

Each online command is a call to ``audit.<method>`` as the operator identity, through the broker
and its ACL like any peer's. ``audit verify --offline FILE --public-key=KEY`` needs no mesh: it
checks an export (pages of bundles, :func:`services.audit.proofs.verify_export`; a single bundle
as older versions wrote is accepted too) with :func:`services.audit.proofs.verify_bundle` and the audit
service's Ed25519 public key alone (Z85, 40 characters, or hex, 64), the key ``audit export``
printed and that should reach the verifier by another channel than the bundle.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import datetime
import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import zmq.utils.z85

from shared import MeshError, MeshHome

from ._mesh import connected
from ._output import CliError, Columns, emit, table
from ._watch import check_flags, watch

_TIMEOUT_S: Final = 30.0       # verify and export read the whole log
_FOLLOW_POLL_S: Final = 1.0
_MAX_TAIL: Final = 1000        # services/audit/schema.py MAX_TAIL
_MAX_BUNDLE: Final = 1 << 30
EXPORT_PAGE_RECORDS = 2000     # records asked per audit.export page (services/audit/export.py)


def when(timestamp: Any) -> str:
    if not isinstance(timestamp, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


_HEADERS: Final = ("SEQ", "TIME", "TYPE", "OUTCOME", "ACTOR", "TARGET", "DETAILS")
_CAPS: Final = (8, 19, 28, 8, 28, 28, 120)


def _details(details: Any) -> str:
    return json.dumps(details, sort_keys=True, default=str, separators=(",", ":")) if details else ""


def record_row(record: dict[str, Any]) -> list[str]:
    """One record's cells (``audit tail``): times in local time, ``-`` for what is not there."""
    who = record.get("actor") or "-"
    if record.get("on_behalf_of"):
        who += f" for {record['on_behalf_of']}"
    return [str(record.get("seq")), when(record.get("time")), str(record.get("type")), str(record.get("outcome")),
            who, str(record.get("target") or "-"), _details(record.get("details")) or "-"]


def record_json(record: dict[str, Any]) -> str:
    """One record as one JSON line (``audit tail --json``: a stream, one object a line)."""
    return json.dumps(record, sort_keys=True, default=lambda v: v.hex() if isinstance(v, bytes) else str(v))


class TailPrinter:
    """``audit tail`` for people: a header and aligned columns, their widths set by the first batch
    (a follow's later records line up under it, a wider value cut with ``…``), "no records" when
    there are none; with ``as_json``, one JSON object a line and nothing for no records."""

    def __init__(self, as_json: bool, follow: bool) -> None:
        self.as_json, self.follow = as_json, follow
        self.columns: Columns | None = None

    def __call__(self, records: list[dict[str, Any]]) -> None:
        if self.as_json:
            for record in records:
                print(record_json(record), flush=True)
            return
        if self.columns is None:
            if not records and not self.follow:
                print("no records")
                return
            self.columns = Columns(_HEADERS, _CAPS, [record_row(r) for r in records], right=(0,))
            print(self.columns.header(), flush=True)
        for record in records:
            print(self.columns.line(record_row(record), styled=3), flush=True)


async def tail(home: MeshHome, *, limit: int, type_: str | None, actor: str | None, follow: bool,
               show: Callable[[list[dict[str, Any]]], None], keep_going: Callable[[], bool] = lambda: True) -> int:
    """Show the last ``limit`` records (filtered), then with ``follow`` every new one until
    ``keep_going`` says stop (or the user interrupts); ``show`` gets each poll's new records, the
    first poll's even when there are none. Returns how many were shown."""
    if not 1 <= limit <= _MAX_TAIL:
        raise CliError(f"--lines must be 1 to {_MAX_TAIL}", status=2)
    body: dict[str, Any] = {"limit": limit}
    if type_:
        body["type"] = type_
    if actor:
        body["actor"] = actor
    shown, last = 0, -1
    async with connected(home) as client:
        while True:
            records = (await client.call("audit.tail", body, timeout=_TIMEOUT_S))["records"]
            new = [record for record in records if record["seq"] > last]
            if new or last < 0:
                show(new)
            if new:
                shown, last = shown + len(new), new[-1]["seq"]
            if not follow or not keep_going():
                return shown
            body["limit"] = _MAX_TAIL  # catch up on everything since the last poll
            await asyncio.sleep(_FOLLOW_POLL_S)  # a polling interval, not a synchronisation


async def verify(home: MeshHome) -> dict[str, Any]:
    """``audit.verify``; a failure is a :class:`CliError` naming the first bad record."""
    async with connected(home) as client:
        result: dict[str, Any] = await client.call("audit.verify", timeout=_TIMEOUT_S)
    if not result.get("ok"):
        if result.get("damaged"):
            raise CliError(f"audit log verification FAILED (the database is damaged): {result.get('error')}")
        raise CliError(_failure(result.get("first_bad"), str(result.get("error"))))
    return result


def _failure(first_bad: Any, error: str) -> str:
    where = f"first bad record: {first_bad}" if first_bad is not None else "no single record to blame"
    return f"audit log verification FAILED ({where}): {error}"


def z85(key: bytes) -> str:
    return bytes(zmq.utils.z85.encode(key)).decode("ascii")


def parse_public_key(text: str) -> bytes:
    """A 32-byte Ed25519 public key from Z85 (40 characters) or hex (64)."""
    text = text.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text)
        if len(text) == 40:
            return bytes(zmq.utils.z85.decode(text.encode("ascii")))
    except (ValueError, UnicodeEncodeError, binascii.Error, KeyError):
        pass
    raise CliError("--public-key must be the audit public key in Z85 (40 characters) or hex (64)", status=2)


async def export(home: MeshHome, path: Path) -> dict[str, Any]:
    """Every record, page by page through ``audit.export``, all proven against the checkpoint the
    first page named, written as one export file to ``path`` (0600, replaced atomically)."""
    from services.audit.proofs import pack_export  # late: only this command needs it

    bundles: list[bytes] = []
    body: dict[str, Any] = {"from_seq": 0, "limit": EXPORT_PAGE_RECORDS}
    async with connected(home) as client:
        while True:
            reply = await client.call("audit.export", body, timeout=_TIMEOUT_S)
            bundles.append(bytes(reply["bundle"]))
            if reply["next_seq"] is None:
                break
            body = {"from_seq": reply["next_seq"], "limit": EXPORT_PAGE_RECORDS, "tree_size": reply["tree_size"]}
    data, key = pack_export(bundles), bytes(reply["public_key"])
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
    return {"file": str(path.resolve()), "records": reply["tree_size"], "pages": len(bundles), "bytes": len(data),
            "public_key_z85": z85(key), "public_key_hex": key.hex()}


def verify_offline(path: Path, public_key: str) -> dict[str, Any]:
    """Verify an export (every page, one checkpoint, no record missing) with the public key only;
    no mesh involved."""
    from services.audit.errors import TamperError  # late: only this command needs the verifier
    from services.audit.proofs import verify_export

    key = parse_public_key(public_key)
    try:
        if path.stat().st_size > _MAX_BUNDLE:
            raise CliError(f"{path} is larger than any bundle meshctl reads ({_MAX_BUNDLE} bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    try:
        bundle = verify_export(data, key)
    except TamperError as exc:
        raise CliError(_failure(exc.sequence, exc.message)) from None
    except MeshError as exc:
        raise CliError(f"cannot verify {path}: {exc.message}") from None
    return {"ok": True, "file": str(path), "records": len(bundle.records),
            "checkpoint_size": bundle.checkpoint.tree_size, "checkpoint_time": bundle.checkpoint.time}


async def alerts(home: MeshHome) -> list[dict[str, Any]]:
    async with connected(home) as client:
        reply = await client.call("audit.alerts", timeout=_TIMEOUT_S)
    return list(reply["alerts"])


async def ack(home: MeshHome, alert_id: int) -> dict[str, Any]:
    async with connected(home) as client:
        result: dict[str, Any] = await client.call("audit.alerts.ack", {"id": alert_id}, timeout=_TIMEOUT_S)
    return result


def alerts_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no open alerts"
    return table(["ID", "RULE", "SUBJECT", "COUNT", "THRESHOLD", "WINDOW", "OPENED", "LAST SEEN"],
                 [[a["id"], a["rule"], a["subject"], a["count"], a["threshold"], f"{a['window_s']:g}s",
                   when(a["opened"]), when(a["last_seen"])] for a in rows])



def run_audit(args: argparse.Namespace, home: MeshHome) -> int:
    """``meshctl audit ACTION``."""
    action = args.action  # which options apply to which action is checked as the line is parsed (_args)
    if action == "tail":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(tail(home, limit=args.lines, type_=args.type, actor=args.actor, follow=args.follow,
                             show=TailPrinter(args.json, args.follow)))
        return 0
    if action == "verify":
        if args.offline or args.public_key:
            return verify_offline_cmd(args)
        result = asyncio.run(verify(home))
        emit(args.json, result, f"audit log verified: {result['size']} records, "
                           f"trusted checkpoint at {result['checkpoint_size']}")
        return 0
    if not args.file:
        raise CliError("audit export needs a FILE to write", status=2)
    result = asyncio.run(export(home, Path(args.file)))
    emit(args.json, result, f"wrote {result['records']} records with proofs to {result['file']} "
                       f"({result['pages']} pages, {result['bytes']} bytes)\n"
                       f"audit public key (Z85): {result['public_key_z85']}\n"
                       f"audit public key (hex): {result['public_key_hex']}\n"
                       "give the key to the verifier by another channel than the file; they run:\n"
                       f"  meshctl audit verify --offline {shlex.quote(result['file'])} "
                       # One quoted word with "=": a Z85 key may start with "-" (argparse would take it
                       # for an option) and holds characters the shell treats specially.
                       f"{shlex.quote('--public-key=' + result['public_key_z85'])}")
    return 0


def verify_offline_cmd(args: argparse.Namespace) -> int:
    """``meshctl audit verify --offline FILE --public-key KEY``: exit 0 only if the bundle verifies."""
    if not (args.offline and args.public_key):
        raise CliError("audit verify --offline FILE needs --public-key KEY (and the other way round)", status=2)
    result = verify_offline(Path(args.offline), args.public_key)
    emit(args.json, result, f"bundle verified: {result['records']} records proven against a signed checkpoint "
                       f"of {result['checkpoint_size']} records ({when(result['checkpoint_time'])})")
    return 0


def run_alerts(args: argparse.Namespace, home: MeshHome) -> int:
    """``meshctl alerts [list]`` and ``meshctl alerts ack ID``."""
    if args.action == "ack":
        check_flags(args, applies=False)
        if args.id is None:
            raise CliError("alerts ack needs an ID (meshctl alerts lists them)", status=2)
        result = asyncio.run(ack(home, args.id))
        emit(args.json, result, f"alert {result['id']} acknowledged (audit record {result['record']})")
        return 0
    interval = check_flags(args, applies=True)
    if interval is not None:
        async def fetch() -> tuple[list[dict[str, Any]], str]:
            rows = await alerts(home)
            return rows, alerts_table(rows)

        return watch(fetch, interval, args.json, f"meshctl alerts of {home.root}")
    rows = asyncio.run(alerts(home))
    emit(args.json, rows, alerts_table(rows))
    return 0

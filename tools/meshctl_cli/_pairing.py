"""``meshctl pair`` (join a device to the mesh) and ``meshctl devices`` (the paired devices).

``pair start`` opens a pairing window on the mesh and shows its one-time code, the same as a QR
code (endpoint, broker key fingerprint, code: what ``pair join --offer`` takes), and the command to
run on the device; then it waits, with a progress line on stderr, until the device has joined or
the window ended (the deadline, three failed attempts, ``pair cancel``). Ctrl-C cancels the window.
``--no-wait`` prints the window and returns (scripts; ``pair status`` follows it).

``pair join CODE --endpoint tcp://HOST:PORT`` runs on the device: it needs no mesh home, only a
device directory (``--device-dir``, default ``~/.config/curvemesh-device``) where it keeps its
fresh keypair, the mesh's pinned keys and its audit witness (:mod:`shared.device`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from shared import MeshClient, MeshError, MeshHome, Timeout

from . import _confirm
from ._audit import when
from ._authz import call, with_mesh
from ._mesh import connected
from ._output import CliError, emit, emit_json, table
from ._render import dash, qr_code


def _start_text(started: dict[str, Any]) -> str:
    return "\n".join([
        f"pairing code: {started['code']}",
        f"endpoint:     {started['endpoint']}",
        f"broker:       {started['broker_fingerprint']}",
        "",
        "on the device, scan the QR code or run:",
        f"  meshctl pair join {started['code']} --endpoint {started['endpoint']}",
    ])


async def _wait(client: MeshClient, events: Any, started: dict[str, Any], show: bool) -> dict[str, Any]:
    """Until the window ends: its final state (``pairing.window`` events; the progress on stderr)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + float(started["ttl_s"]) + 5.0
    while True:
        left = deadline - loop.time()
        if show:
            print(f"\rwaiting for the device ... {max(0, int(left - 5))} s left ", end="", file=sys.stderr, flush=True)
        if left <= 0:
            # No end announced (a lost event): the window itself says how it ended.
            return dict(await call(client, "pairing.window", {"window": started["window"]}))
        try:
            event = await events.next(timeout=min(1.0, left))
        except Timeout:
            continue
        body = event.body if isinstance(event.body, dict) else {}
        if event.sender == "pairing" and body.get("window") == started["window"] and body.get("state") != "open":
            return body


def _pair_start(args: argparse.Namespace, home: MeshHome) -> int:
    body: dict[str, Any] = {}
    for key, value in (("name", args.name), ("ttl_s", args.ttl), ("host", args.host)):
        if value is not None:
            body[key] = value
    terminal = sys.stdout.isatty() and not args.json

    async def run() -> tuple[dict[str, Any], dict[str, Any] | None]:
        async with connected(home) as client:
            events = await client.subscribe("pairing.window")
            started = dict(await call(client, "pairing.start", body))
            if args.no_wait:
                return started, None
            if args.json:
                emit_json({k: started[k] for k in ("window", "code", "endpoint", "offer", "expires_at")})
            else:
                print(_start_text(started), flush=True)
                if terminal:
                    print(qr_code(started["offer"]), end="", flush=True)
            try:
                return started, await _wait(client, events, started, sys.stderr.isatty())
            except (KeyboardInterrupt, asyncio.CancelledError):
                await call(client, "pairing.cancel", {"window": started["window"]})
                raise

    started, ended = asyncio.run(run())
    if ended is None:
        emit(args.json, started, _start_text(started))
        return 0
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if args.json:
        emit_json(ended)
    if ended["state"] == "joined":
        if not args.json:
            print(f"paired: {ended['device']} joined the mesh")
        return 0
    reasons = {"expired": "the window expired before a device joined",
               "failures": f"{ended['failures']} failed attempts closed the window",
               "cancelled": "the window was cancelled", "stopped": "pairing stopped"}
    raise CliError(f"not paired: {reasons.get(ended['state'], ended['state'])}; run `meshctl pair start` "
                   "for a new code", status=1)


def _pair_join(args: argparse.Namespace) -> int:
    from shared import device, pake

    if args.offer:
        try:
            offer = pake.decode_offer(args.offer)
        except MeshError as exc:
            raise CliError(f"--offer: {exc.message}", status=2) from None
        code, endpoint, expect = offer.code, offer.endpoint, offer.broker_fingerprint
    else:
        if not args.code or not args.endpoint:
            raise CliError("pair join needs the CODE and --endpoint tcp://HOST:PORT (or --offer from the QR code)",
                           status=2)
        code, endpoint, expect = args.code, args.endpoint, None
    directory = Path(args.device_dir).expanduser() if args.device_dir else device.default_directory()
    try:
        profile = asyncio.run(device.join(code, endpoint, directory, name=args.name or "", expect_broker=expect))
    except MeshError as exc:
        raise CliError(exc.message, status=1, kind=exc.code.lower()) from None
    summary = {"name": profile.name, "endpoints": list(profile.endpoints),
               "broker_fingerprint": profile.broker_fingerprint, "device_dir": str(directory)}
    emit(args.json, summary, f"paired as {profile.name}; the mesh's broker is {profile.broker_fingerprint}\n"
                             f"this device's keys and pinned mesh keys are in {directory}")
    return 0


def _window(args: argparse.Namespace, home: MeshHome, method: str) -> int:
    state = with_mesh(home, lambda c: call(c, method, {}))
    text = (f"window {state['window']}: {state['state']}"
            + (f", {int(state['remaining_s'])} s left" if state["state"] == "open" else "")
            + f", {state['failures']}/{state['max_failures']} failed attempts, {state['refused']} connections refused"
            + (f", device {state['device']}" if state.get("device") else ""))
    emit(args.json, state, text)
    return 0


def run_pair(args: argparse.Namespace, home: MeshHome | None) -> int:
    """``meshctl pair start [--name N] [--ttl S] [--host H] [--no-wait]``, ``pair join CODE --endpoint
    tcp://HOST:PORT [--device-dir D] [--name N]`` (or ``--offer TEXT``), ``pair status``, ``pair cancel``."""
    if args.action == "join":
        return _pair_join(args)
    assert home is not None
    if args.action == "start":
        return _pair_start(args, home)
    return _window(args, home, "pairing.window" if args.action == "status" else "pairing.cancel")


def _device_rows(devices: list[dict[str, Any]]) -> str:
    if not devices:
        return "no paired devices (meshctl pair start pairs one)"
    rows = [[d["name"], d["identity"], d["fingerprint"][:16], d["trust"],
             d["mode"] if d["connected"] else "-", dash(d["address"]), when(d["last_seen"]),
             when(d["paired_at"]), dash(d["client_version"])] for d in devices]
    return table(["NAME", "IDENTITY", "FINGERPRINT", "TRUST", "CONNECTED", "ADDRESS", "LAST SEEN", "PAIRED",
                  "CLIENT"], rows)


def _device_text(d: dict[str, Any]) -> str:
    lines = [f"{d['name']} (identity {d['identity']}, {d['trust']})",
             f"  fingerprint  {d['fingerprint']}",
             f"  paired       {when(d['paired_at'])} from {d['paired_from']}",
             f"  last seen    {when(d['last_seen'])} at {dash(d['address'])}",
             f"  connected    {d['mode'] + ', ' + str(d['connected']) + ' connection(s)' if d['connected'] else 'no'}",
             f"  client       {dash(d['client_version'])}"]
    if d.get("revoked_at") is not None:
        lines.append(f"  revoked      {when(d['revoked_at'])} by {d['revoked_by']}")
    return "\n".join(lines)


def run_devices(args: argparse.Namespace, home: MeshHome) -> int:
    """``meshctl devices list [--all]``, ``show REF``, ``rename REF NEW_NAME``, ``revoke REF [-y]``."""
    if args.action == "list":
        devices = with_mesh(home, lambda c: call(c, "pairing.devices.list", {"all": bool(args.all)}))
        emit(args.json, devices, _device_rows(devices))
        return 0
    if not args.ref:
        raise CliError(f"devices {args.action} needs a device: its name, identity or fingerprint", status=2)
    if args.action == "show":
        shown = with_mesh(home, lambda c: call(c, "pairing.devices.show", {"ref": args.ref}))
        emit(args.json, shown, _device_text(shown))
        return 0
    if args.action == "rename":
        if not args.new_name:
            raise CliError("devices rename needs REF and NEW_NAME", status=2)
        renamed = with_mesh(home, lambda c: call(c, "pairing.devices.rename", {"ref": args.ref, "name": args.new_name}))
        emit(args.json, renamed, f"renamed: {renamed['name']} (identity {renamed['identity']})")
        return 0
    _confirm.require(args)
    shown = with_mesh(home, lambda c: call(c, "pairing.devices.show", {"ref": args.ref}))
    _confirm.confirm(args, f"revoke device {shown['name']} ({shown['fingerprint'][:16]}): its connection is cut, "
                           "its sign-ins end and its consent grants are revoked, now")
    done = with_mesh(home, lambda c: call(c, "pairing.devices.revoke", {"ref": shown["identity"]}))
    emit(args.json, done, f"revoked {done['name']}: {done['connections_cut']} connection(s) cut, "
                          f"{done['sessions_ended']} session(s) ended, {done['grants_revoked']} grant(s) revoked")
    return 0

"""A device's frontend for the tests that run it in another network namespace (``python -m tests.device_agent``).

``session DIR``: connects detached with the paired device directory ``DIR`` (:func:`shared.device.connect_device`:
tcp, CURVE, the pinned broker key, the audit witness checked first), prints one JSON line, then reads
one JSON command per line on stdin and answers each with one JSON line on stdout:

- ``{"call": "svc.method", "body": {...}}`` → ``{"ok": reply}`` or ``{"error": CODE, "message": text}``;
  in ``body``, the string ``"$token"`` stands for the access token of the last ``authn.login.password``
  (kept here, never printed) and a string ``"b:text"`` for the bytes ``b"text"`` (replies' bytes are
  printed as text);
- ``{"token_out": PATH}`` writes that token to ``PATH`` (0600, for a test to hand to another device);
  ``{"token_in": PATH}`` reads one.

The first line is ``{"ready": true, "name": identity, "witnessed": tree_size}`` or ``{"error": ...}`` (then it
exits 3 for a witness mismatch, 1 otherwise).

``stranger ENDPOINT BROKER_KEY``: a fresh keypair that was never paired tries to connect; prints
``{"error": CODE}`` (the handshake refused) or ``{"connected": true}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from shared import Connection, MeshError, RuntimeConfig, certs, defer_logging, device
from shared.transparency import Witness, WitnessMismatch


def _plain(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _say(value: dict[str, Any]) -> None:
    print(json.dumps(value, default=_plain), flush=True)


def _substitute(value: Any, token: str | None) -> Any:
    if value == "$token":
        return token
    if isinstance(value, str) and value.startswith("b:"):  # JSON has no bytes: "b:text" is b"text"
        return value[2:].encode()
    if isinstance(value, dict):
        return {k: _substitute(v, token) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, token) for v in value]
    return value


async def session(directory: Path) -> int:
    try:
        client = await device.connect_device(directory, timeout=15)
    except WitnessMismatch as exc:
        _say({"error": "WITNESS_MISMATCH", "problem": exc.problem, "message": str(exc)})
        return 3
    except MeshError as exc:
        _say({"error": exc.code, "message": exc.message})
        return 1
    profile = device.load_profile(directory)
    witness = Witness(directory / "audit.witness", profile.audit_public_key)
    _say({"ready": True, "name": profile.name, "witnessed": witness.since()})
    token: str | None = None
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            if "token_out" in command:
                fd = os.open(command["token_out"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(token or "")
                _say({"ok": True})
                continue
            if "token_in" in command:
                token = Path(command["token_in"]).read_text()
                _say({"ok": True})
                continue
            try:
                reply = await client.call(command["call"], _substitute(command.get("body"), token), timeout=15)
            except MeshError as exc:
                _say({"error": exc.code, "message": exc.message})
                continue
            if command["call"] == "authn.login.password":
                token = reply["access_token"]
                reply = {"user": reply.get("user"), "session": reply.get("session")}
            _say({"ok": reply})
    finally:
        await client.close()
    return 0


async def stranger(endpoint: str, broker_key: Path) -> int:
    pair = certs.generate("stranger", "device")
    connection = Connection(pair, certs.load_certificate(broker_key).public_key, endpoint, RuntimeConfig())
    try:
        await connection.open(10)
    except MeshError as exc:
        _say({"error": exc.code})
        return 0
    finally:
        await connection.close()
    _say({"connected": True})
    return 0


def main(argv: list[str]) -> int:
    defer_logging("device-agent", "critical")  # stdout is the JSON lines' alone
    if argv[:1] == ["session"] and len(argv) == 2:
        return asyncio.run(session(Path(argv[1])))
    if argv[:1] == ["stranger"] and len(argv) == 3:
        return asyncio.run(stranger(argv[1], Path(argv[2])))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

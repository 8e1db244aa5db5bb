"""Breaking the protocol through the raw socket (fd 3) and flooding the host."""

import os
import socket
import sys

import curvemesh_plugin as cp

raw = socket.socket(fileno=os.dup(3))
PACK = sys.modules["msgpack"].packb  # the bootstrap's codec, already loaded

try:
    cp.kv.get("early", b"x")
    EARLY = "no error"
except cp.Error as exc:
    EARLY = exc.code


@cp.function()
def early(args):
    return EARLY


@cp.function()
def oversized(args):
    raw.send(b"x" * (args["size"]))
    return True


@cp.function()
def malformed(args):
    raw.send(b"\xc1")
    return True


@cp.function()
def extra_key(args):
    raw.send(PACK({"t": "result", "id": args["id"], "ok": True, "value": 1, "extra": 2}))
    return True


@cp.function()
def wrong_id(args):
    raw.send(PACK({"t": "result", "id": 999_999, "ok": True, "value": 1}))
    return True


@cp.function()
def unknown_op(args):
    raw.send(PACK({"t": "request", "id": 1, "op": "fs.read", "args": {"path": "/etc/shadow"}}))
    return True


def after_the_result(then):
    """Run ``then(result)`` right after the bootstrap has sent the current call's result."""
    link = cp._link
    send_result = link.send_result

    def send_and_then(result):
        link.send_result = send_result
        send_result(result)
        then(result)
    link.send_result = send_and_then


@cp.function()
def late_frame(args):
    """Returns, then sends one more frame while the host expects none."""
    after_the_result(lambda result: raw.send(PACK({"t": "result", "id": result["id"], "ok": True, "value": "late"})))
    return "done"


@cp.function()
def exit_later(args):
    """Returns, then exits on its own while idle."""
    after_the_result(lambda result: os._exit(3))
    return "done"


@cp.function()
def request_flood(args):
    while True:
        cp.kv.get("flood", b"x")


@cp.function()
def stdout_flood(args):
    line = "x" * 1000 + "\n"
    while True:
        sys.stdout.write(line)


@cp.function()
def odd_output(args):
    sys.stdout.write("\x1b[31mred\x07 and a bell\n")
    sys.stdout.write("y" * 5000 + "\n")
    sys.stderr.write("to stderr\n")
    sys.stderr.flush()
    return True

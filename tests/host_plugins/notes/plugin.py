"""A well-behaved test plugin (tests/test_plugin_host.py): its own storage, a person's notes with
their consent, events, and, on request, one escape attempt or a crash, so the host's answers to a
plugin that misbehaves can be watched beside one that does not."""

import os

import curvemesh_plugin as cp


@cp.function()
def hello(args):
    return {"hello": args.get("who", "world") if isinstance(args, dict) else "world"}


@cp.function()
def remember(args):
    cp.kv.put("summaries", args["key"].encode(), args["value"].encode())
    return True


@cp.function()
def recall(args):
    value = cp.kv.get("summaries", args["key"].encode())
    return None if value is None else value.decode()


@cp.function()
def recall_all(args):
    return sorted(k.decode() for k, _ in cp.kv.scan("summaries"))


@cp.function()
def read_note(args):
    value = cp.userdata.get("notes", args["key"].encode())
    return None if value is None else value.decode()


@cp.function()
def write_note(args):
    cp.userdata.put("notes", args["key"].encode(), args["value"].encode())
    return True


@cp.function()
def ungranted(args):
    """Asks for a category it was not granted; the host refuses (cp.Denied reaches here)."""
    try:
        cp.kv.get("secrets", b"x")
    except cp.Denied as denied:
        return {"denied": str(denied)}
    return {"denied": None}


@cp.function()
def escape(args):
    what = args["what"]
    if what == "socket":
        import socket
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", int(args.get("port", 9))))
    elif what == "read":
        with open(args["path"], "rb") as f:
            return f.read().decode(errors="replace")
    elif what == "exec":
        os.execv("/bin/sh", ["sh", "-c", "true"])
    elif what == "spin":
        while True:
            pass
    elif what == "crash":
        os._exit(3)
    return "not stopped"


@cp.on_event("notes.")
def on_note(topic, body):
    cp.kv.put("summaries", b"last-event", topic.encode())

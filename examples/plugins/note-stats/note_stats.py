"""note-stats: counts the words of a person's notes (with their consent) and keeps the last count in
its own storage. Runs in plugin-host's sandbox: only the standard library and this directory."""

import curvemesh_plugin as cp


@cp.function()
def count(args):
    """``{"note": "<key>"}`` -> the number of words in that note of the person the call is for."""
    text = cp.userdata.get("notes", args["note"].encode())
    words = len(text.split()) if text else 0
    cp.kv.put("stats", b"last", str(words).encode())
    return words


@cp.function()
def last(args):
    """The last count made, or None."""
    value = cp.kv.get("stats", b"last")
    return None if value is None else int(value)


@cp.on_event("notes.")
def changed(topic, body):
    # A note changed: the last count may be stale.
    cp.kv.put("stats", b"last", b"-1")

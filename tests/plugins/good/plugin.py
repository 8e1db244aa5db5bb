"""A well-behaved plugin: it answers, stores through the host, handles events, fails politely."""

import curvemesh_plugin as cp

print("good plugin imported")


@cp.function()
def ping(args):
    return {"pong": args}


@cp.function("kv.roundtrip")
def roundtrip(args):
    cp.kv.put("notes", b"a", b"1")
    cp.kv.put("notes", b"b", b"2")
    return {"get": cp.kv.get("notes", b"a"), "missing": cp.kv.get("notes", b"zz"),
            "scan": cp.kv.scan("notes", prefix=b"", limit=10)}


@cp.function()
def ask(args):
    """One userdata request; how the host's refusal reached the plugin."""
    try:
        return {"value": cp.userdata.get("health", b"steps")}
    except cp.Denied as exc:
        return {"class": "Denied", "code": exc.code, "message": exc.message}
    except cp.Error as exc:
        return {"class": "Error", "code": exc.code, "message": exc.message}


@cp.function()
def fail(args):
    raise ValueError("bad input: " + str(args))


@cp.function()
def unsendable(args):
    return {1, 2, 3}


@cp.on_event("notes.")
def on_note(topic, body):
    cp.kv.put("events", topic.encode(), body)

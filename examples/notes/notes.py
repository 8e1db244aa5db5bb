"""A companion's own service: notes kept encrypted by storage, called from meshctl (docs/services.md)."""

from dataclasses import field
from typing import Any

from shared import RequestContext, Service, handler, message


@message
class Note:
    """``{title, text?}``: the text is the user's own words, so it is never logged."""

    title: str = field(metadata={"max_len": 200})
    text: str = field(default="", metadata={"max_len": 100_000, "sensitive": True})


class Notes(Service):
    name = "notes"

    @handler("put", request=Note)
    async def put(self, ctx: RequestContext, req: Note) -> dict[str, Any]:
        """``notes.put {title, text}`` → ``{saved}``.
        ``meshctl call notes.put --body '{"title": "shopping", "text": "milk"}'``."""
        # The service's own data (no person's token): each caller's notes under its own name.
        await self.mesh.call("storage.kv.put", {"category": "notes", "key": f"{ctx.caller}/{req.title}".encode(),
                                                "value": req.text.encode()})
        return {"saved": req.title}

    @handler("get", request=Note)
    async def get(self, ctx: RequestContext, req: Note) -> dict[str, Any]:
        """``notes.get {title}`` → ``{title, text}`` (text None when there is no such note).
        ``meshctl call notes.get --body '{"title": "shopping"}'``."""
        found = await self.mesh.call("storage.kv.get", {"category": "notes",
                                                        "key": f"{ctx.caller}/{req.title}".encode()})
        return {"title": req.title, "text": found["value"].decode() if found["found"] else None}

"""A small service used by the tests: echoes, reports its caller, or blocks."""

from __future__ import annotations

import asyncio
from dataclasses import field
from typing import Any

from shared import BadRequest, RequestContext, Service, handler, message


@message
class EchoRequest:
    value: Any = None


@message
class Secretive:
    password: str = field(metadata={"sensitive": True, "max_len": 200})


@message
class Pong:
    pong: int


class Echo(Service):
    """Mesh name ``echo``."""

    name = "echo"

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.active = 0
        self.max_active = 0

    @handler("echo", request=EchoRequest)
    async def echo(self, ctx: RequestContext, req: EchoRequest) -> dict[str, Any]:
        return {"value": req.value, "caller": ctx.caller, "role": ctx.role, "fingerprint": ctx.fingerprint}

    @handler("block")
    async def block(self, ctx: RequestContext, req: Any) -> dict[str, Any]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.entered.set()
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        return {"released": True}

    @handler("block_concurrent", concurrent=True)
    async def block_concurrent(self, ctx: RequestContext, req: Any) -> dict[str, Any]:
        return await self.block(ctx, req)

    @handler("fail")
    async def fail(self, ctx: RequestContext, req: Any) -> None:
        raise RuntimeError("internal detail /etc/secret-path must not leak")

    @handler("refuse")
    async def refuse(self, ctx: RequestContext, req: Any) -> None:
        raise BadRequest("no such thing")

    @handler("verbose")
    async def verbose(self, ctx: RequestContext, req: Any) -> None:
        raise BadRequest("é" * 3000)

    @handler("pong", request=EchoRequest, reply=Pong)
    async def pong(self, ctx: RequestContext, req: EchoRequest) -> Any:
        return {"pong": req.value}  # a non-integer value breaks the declared reply type

    @handler("login", request=Secretive)
    async def login(self, ctx: RequestContext, req: Secretive) -> dict[str, Any]:
        raise RuntimeError(f"failed for {req.password}")

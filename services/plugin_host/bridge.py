"""What a plugin's granted request does on the mesh: plugin-host acts, the plugin never does.

A plugin holds no key, certificate or token; plugin-host makes every call for it, after
:func:`.grants.check_request` found a grant that covers it:

- **Its own data** (``kv.*``): storage's ``kv.*`` in plugin-host's own namespace, each key prefixed
  with ``<plugin name>\\0``. A plugin cannot name the prefix (it never sees it, and names hold no NUL),
  so no plugin reads or writes another's data, whatever key it sends.
- **A person's data** (``userdata.*``): only inside a call that carried the person's access token
  (``plugin-host.call {access_token}``); the plugin never sees the token. authz is asked first, about
  the principal ``plugin:<name>`` acting for the token's user with purpose ``<name>``: its built-in
  ``consent-required`` policy denies a plugin without the person's live consent grant, and the
  answer is never reused, so a revoked grant refuses the very next request. Then storage is called
  with the token (storage verifies it with authn, bound to the key of whoever presented it, and asks
  authz about plugin-host itself, which holds the ``user-data`` role).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from shared import MeshError
from shared.tokens import claimed_subject

from .grants import CapabilityDenied, Request

CALL_TIMEOUT_S: Final = 5.0
SEPARATOR: Final = b"\x00"


@dataclass(frozen=True, slots=True)
class Person:
    """Whom a call acts for: the access token that came with it (never shown to the plugin) and the
    fingerprint of the peer that presented it."""

    token: str
    presenter: str

    @property
    def user(self) -> str | None:
        return claimed_subject(self.token)


Call = Callable[..., Awaitable[Any]]


class Bridge:
    """Runs requests for plugin ``name`` with the service's mesh ``call``."""

    def __init__(self, name: str, call: Call) -> None:
        self.name = name
        self.prefix = name.encode() + SEPARATOR
        self.call = call

    async def run(self, request: Request, person: Person | None) -> Any:
        """The request's result, as the SDK expects it; :class:`CapabilityDenied` or :class:`MeshError`."""
        if request.kind == "storage.kv":
            return await self._own(request)
        return await self._person(request, person)

    async def _own(self, request: Request) -> Any:
        args, category = request.args, request.category
        if request.op == "kv.get":
            reply = await self._storage("kv.get", {"category": category, "key": self.prefix + args["key"]})
            return reply["value"] if reply.get("found") else None
        if request.op == "kv.put":
            await self._storage("kv.put", {"category": category, "key": self.prefix + args["key"],
                                           "value": args["value"]})
            return None
        body: dict[str, Any] = {"category": category, "prefix": self.prefix + args.get("prefix", b""),
                                "limit": args.get("limit", 100)}
        if "after" in args:
            body["after"] = self.prefix + args["after"]
        reply = await self._storage("kv.scan", body)
        cut = len(self.prefix)
        return [[bytes(k)[cut:], v] for k, v in reply["items"] if bytes(k).startswith(self.prefix)]

    async def _person(self, request: Request, person: Person | None) -> Any:
        if person is None or person.user is None:
            raise CapabilityDenied("FORBIDDEN", f"{request.op}: this call carries no person's access token; "
                                                "a person's data is reached only in a call made for them")
        decision = await self._ask("authz.check", {
            "principal": f"plugin:{self.name}", "action": request.action, "category": request.category,
            "owner": person.user, "user": person.user, "purpose": self.name})
        if decision.get("allow") is not True:
            reason = decision.get("reason") or "denied"
            raise CapabilityDenied("FORBIDDEN", f"{request.op} on {request.category}: {reason}", request.grant)
        access = {"category": request.category, "token": person.token, "presenter": person.presenter,
                  "purpose": self.name}
        args = request.args
        if request.op == "userdata.get":
            reply = await self._storage("kv.get", {**access, "key": args["key"]})
            return reply["value"] if reply.get("found") else None
        if request.op == "userdata.put":
            await self._storage("kv.put", {**access, "key": args["key"], "value": args["value"]})
            return None
        body = {**access, "prefix": args.get("prefix", b""), "limit": args.get("limit", 100)}
        if "after" in args:
            body["after"] = args["after"]
        reply = await self._storage("kv.scan", body)
        return [[k, v] for k, v in reply["items"]]

    async def _storage(self, method: str, body: dict[str, Any]) -> Any:
        return await self._ask(f"storage.{method}", body)

    async def _ask(self, target: str, body: dict[str, Any]) -> Any:
        try:
            return await self.call(target, body, timeout=CALL_TIMEOUT_S)
        except MeshError as exc:
            # The plugin learns the code and storage's or authz's sentence (they never carry a secret);
            # a refusal there is as final as one here.
            raise CapabilityDenied(exc.code, f"{target.split('.')[0]}: {exc.message}"[:300]) from None

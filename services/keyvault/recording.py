"""keyvault's audit trail: its own durable spool, and the live record of each key release.

:class:`RecordingMixin` is mixed into :class:`~.service.Keyvault`, which owns and initialises the
state declared here and opens/closes the spool from its lifecycle hooks. Contract:

- :meth:`RecordingMixin._audit` appends a record to keyvault's own audit spool and fsyncs it
  before returning, so the operation that asked for it answers only once its record is durable
  (fail closed). A full spool raises ``UNAVAILABLE`` and the operation is refused. The spool is
  shipped to audit by an :class:`~shared.AuditShipper`, so nothing is lost while audit is down.
- :meth:`RecordingMixin._record_release` has the audit service itself record a key release
  (``audit.append``, awaited for at most :data:`AUDIT_CALL_TIMEOUT_S`) before the key leaves
  (DESIGN.md invariant 7). When audit cannot record it, the refusal goes to the spool and the
  release is refused with ``UNAVAILABLE`` (:data:`REFUSED_NOT_RECORDING`).
- Audit's own keys (:data:`AUDIT_OWN_PURPOSES`) cannot wait for audit to record them; the
  service spools those releases with :meth:`RecordingMixin._audit` instead.
- No record carries key material.
"""

from __future__ import annotations

import time
from typing import Any, Final

import structlog

from shared import AuditShipper, MeshConfig, MeshError, MeshHome, RequestContext, Spool, Unavailable

log = structlog.get_logger("keyvault")  # one logger name for the whole service, as before the split

#: Keys audit fetches for itself: released without a live audit record (it cannot record yet).
AUDIT_OWN_PURPOSES: Final = frozenset({"audit-hmac", "audit-signing"})
AUDIT_CALL_TIMEOUT_S: Final = 2.0    #: how long a key release waits for audit to record it
SHIP_PERIOD_S: Final = 1.0           #: the spool shipper's period when nothing new is spooled
REFUSED_NOT_RECORDING: Final = "audit is not recording: key release refused"


class RecordingMixin:
    """keyvault's audit spool (and its shipper) and the fail-closed recording of key releases."""

    # Owned and initialised by the service (Keyvault.__init__, Service.__init__ for ``mesh``);
    # declared here so this code type-checks.
    home: MeshHome
    config: MeshConfig
    mesh: Any
    spool: Spool | None
    shipper: AuditShipper | None
    #: audit's answer when it last could not record a key release (None once it records again):
    #: until then keyvault releases no key but audit's own, and its health says so.
    audit_refusal: str | None = None

    def _open_audit_spool(self) -> None:
        """Open the spool and, when connected to the mesh, start shipping it to audit."""
        self.home.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.spool = Spool(self.home.spool / "keyvault-audit.spool", self.config.keyvault.audit_spool_max_records)
        if self.mesh is not None:  # None only when handlers are called directly (tests)
            self.shipper = AuditShipper(self.spool, self.mesh, name="keyvault-audit-shipper", period=SHIP_PERIOD_S)
            self.shipper.start()

    async def _close_audit_spool(self) -> None:
        # The shipper stops first: it reads from the spool until then.
        if self.shipper is not None:
            await self.shipper.stop()
            self.shipper = None
        if self.spool is not None:
            self.spool.close()

    def _audit(self, event: str, ctx: RequestContext | None, **details: Any) -> None:
        """Spool an audit record durably (fsync) before the operation answers: fail closed.
        ``ctx`` None: keyvault acting on its own (a migration at start), not for a caller."""
        assert self.spool is not None
        actor, role = (ctx.caller, ctx.role) if ctx is not None else ("keyvault", "service")
        record = {"type": event, "time": time.time(), "actor": actor, "role": role, **details}
        if not self.spool.append(record):
            raise Unavailable("the audit spool is full; refusing until audit catches up")
        self.spool.sync()
        if self.shipper is not None:
            self.shipper.notify()

    async def _record_release(self, ctx: RequestContext, purpose: str, version: int) -> None:
        """Have audit record a key release durably before the key leaves; refuse otherwise."""
        record = {"type": "keyvault.key_release", "outcome": "ok", "target": purpose,
                  "details": {"subject": ctx.caller, "role": ctx.role, "purpose": purpose, "version": version}}
        # Leave the caller time to hear our answer (refusal included) before its own deadline.
        timeout = min(AUDIT_CALL_TIMEOUT_S, max(0.1, ctx.remaining() - 0.5))
        try:
            if self.mesh is None:
                raise Unavailable("keyvault is not connected to the mesh")
            await self.mesh.call("audit.append", {"records": [record]}, timeout=timeout)
        except MeshError as exc:
            self.audit_refusal = f"{exc.code}: {exc.message}"
            log.warning("key_release_refused", purpose=purpose, caller=ctx.caller, reason=exc.code)
            self._audit("keyvault.key_refused", ctx, purpose=purpose, version=version,
                        reason="audit not recording", audit_error=exc.code)
            raise Unavailable(REFUSED_NOT_RECORDING) from None
        self.audit_refusal = None

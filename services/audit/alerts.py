"""Anomaly alerts: rules from ``[audit.rules]`` (mesh.toml) evaluated on records once they are durable.

A rule matches a record and names its *subject* (an account, a source, an identity, a process)
and an *amount* (1, or the record's ``count``, or for ``large_read`` its ``bytes``). When the
amounts of one subject reach the rule's ``threshold`` within ``window_s`` seconds, an alert fires:

- it is appended to the log as a record of its own (``alert.<rule>``, actor ``audit``, outcome
  ``open``, target the subject) through the same group-commit path as every other record;
- once that record is durable the alert is *open*; its id is the record's sequence number, and it
  is published on ``alerts.<rule>`` (audit needs ``publish = ["alerts."]`` in mesh.toml);
- while it is open, more matching records of the same subject raise no new alert: they are
  counted on the open one. It closes when an operator acknowledges it (``audit.alerts.ack``,
  itself recorded as ``alert.ack``) or when ``window_s`` passes with no further matching record.

The rules (the record fields each one reads; producers that do not exist yet are keyed on these):

==========================  =====================================================================
``failed_logins_account``   ``authn.login`` with outcome ``failure``/``failed``/``denied``; subject
                            ``on_behalf_of``, else ``details.account``/``user``, else ``target``
``failed_logins_source``    the same records; subject ``details.source``/``address``/``device``,
                            else the actor
``unknown_certs``           ``mesh.handshake_failed`` and ``mesh.cert_pending`` (amount
                            ``details.count``, default 1); one subject, ``mesh``
``rate_limited``            ``mesh.rate_limited`` (amount ``details.count``); subject
                            ``details.identity``/``subject``, else ``on_behalf_of``/``target``
``crash_loop``              ``process.crash`` (appended by the ``supervisor-events`` listener);
                            subject ``details.process``, else ``target``
``large_read``              a ``*.read`` or ``*.export`` record with a numeric ``details.bytes``
                            (the amount); subject ``on_behalf_of``, else the actor
``repeated_denies``         ``mesh.deny``, ``mesh.refused``, ``authz.deny``, or outcome ``denied``
                            (amount ``details.count``); subject ``details.subject`` (the peer the
                            broker's shipper names), ``identity``/``actor``/``peer``, else
                            ``on_behalf_of``, else the actor
``credential_theft``        ``authn.refresh_reused`` (a spent refresh token came back) and
                            ``authn.passkey_cloned`` (a passkey's signature counter went back):
                            one is enough; subject ``target`` (the username), else
                            ``details.user_id``
``witness_mismatch``        ``audit.witness_mismatch``: a paired device found the log shrunk,
                            forked or not signed by the key it paired with (written by audit
                            from ``audit.witness_report``); one is enough; subject the device
                            (``target``, else the actor)
``pairing_failures``        ``pairing.attempt`` with outcome ``failure``/``failed``/``denied``
                            (a wrong pairing code, an expired window); one subject, ``pairing``
``plugin_faults``           ``plugin.killed``: plugin-host stopped a plugin that broke a quota or
                            a sandbox rule, flooded its socket or crashed; one is enough; subject
                            the plugin (``target``, ``plugin:<name>``)
``verify_failed``           ``audit.verify_failed``: audit's own verification of the stored log
                            failed (the background pass after a start, or ``audit.verify``),
                            written by audit only as it stops appends; one is enough; subject
                            ``target`` (``audit.db``)
==========================  =====================================================================

Open alerts are kept in memory and, when audit unseals, restored from the state saved with the
verified anchor (:class:`.alert_engine.Replay`, in audit's database) and brought up to date with
the records after it; without an anchor they are rebuilt from the whole log
(:meth:`.alert_engine.AlertEngine.rebuild`). Either way the result is what a replay gives: every
``alert.<rule>`` record written by audit with no later ``alert.ack`` for its id is open again, with
the matching records after it counted on it, unless its rule's window has passed since the last of
them (record times). The sliding windows of bursts that had not yet fired are not rebuilt.
``alert.*`` records only come from audit itself (the service refuses them from producers), so a
forged acknowledgement cannot close an alert.

The module split, each layer importing only the ones before it: this module holds the rules (what a
record matches) and the :class:`Alert` with its record form, both ways (:meth:`Alert.record`,
:func:`alert_of`); :mod:`.alert_engine` the windows and the open alerts (pure, synchronous);
:mod:`.alert_desk` the service side (appending alert records, publishing, acknowledgements).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from .chain import Record

__all__ = [
    "ACK_EVENT", "ALERT_ACTOR", "CERT_EVENTS", "DENY_EVENTS", "FAILURE_OUTCOMES", "RULES", "SUPERVISOR_SENDER",
    "Alert", "Match", "PAIRING_ATTEMPT", "PLUGIN_KILLED", "THEFT_EVENTS", "WITNESS_EVENT", "alert_of", "crash_loop",
    "credential_theft", "failed_logins_account", "failed_logins_source", "large_read", "pairing_failures",
    "plugin_faults", "rate_limited", "repeated_denies", "unknown_certs", "verify_failed", "VERIFY_FAILED_EVENT",
    "witness_mismatch",
]

ALERT_ACTOR: Final = "audit"
ACK_EVENT: Final = "alert.ack"
FAILURE_OUTCOMES: Final = frozenset({"failure", "failed", "denied"})
DENY_EVENTS: Final = frozenset({"mesh.deny", "mesh.refused", "authz.deny"})
#: Records that mean a credential is in two hands: the owner's and someone else's.
THEFT_EVENTS: Final = frozenset({"authn.refresh_reused", "authn.passkey_cloned"})
CERT_EVENTS: Final = frozenset({"mesh.handshake_failed", "mesh.cert_pending"})
#: A paired device's report that the log is not the one it witnessed (only audit writes it).
WITNESS_EVENT: Final = "audit.witness_mismatch"
#: Audit's own verification of the stored log failed (only audit writes it, as it stops appends).
VERIFY_FAILED_EVENT: Final = "audit.verify_failed"
#: One attempt to pair a device (the pairing service's record; outcome ``ok`` or ``failure``).
PAIRING_ATTEMPT: Final = "pairing.attempt"
#: plugin-host stopped a plugin for a fault (a quota, a sandbox rule, a flood, a crash).
PLUGIN_KILLED: Final = "plugin.killed"
#: The only identity that may append ``process.*`` records (it speaks for supervisord).
SUPERVISOR_SENDER: Final = "supervisor-events"

#: What a rule makes of a record: (subject, amount), or None when the record is not its kind.
Match = tuple[str, int] | None


def _text(record: Record, *names: str) -> str | None:
    for name in names:
        value = record.details.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _amount(record: Record, name: str = "count") -> int:
    value = record.details.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    return 1


def _failed_login(record: Record) -> bool:
    return record.event == "authn.login" and record.outcome in FAILURE_OUTCOMES


def failed_logins_account(record: Record) -> Match:
    if not _failed_login(record):
        return None
    subject = record.on_behalf_of or _text(record, "account", "user", "username") or record.target
    return (subject, 1) if subject else None


def failed_logins_source(record: Record) -> Match:
    if not _failed_login(record):
        return None
    return (_text(record, "source", "address", "device") or record.actor, 1)


def unknown_certs(record: Record) -> Match:
    return ("mesh", _amount(record)) if record.event in CERT_EVENTS else None


def rate_limited(record: Record) -> Match:
    if record.event != "mesh.rate_limited":
        return None
    subject = _text(record, "identity", "subject") or record.on_behalf_of or record.target
    return (subject, _amount(record)) if subject else None


def crash_loop(record: Record) -> Match:
    if record.event != "process.crash":
        return None
    subject = _text(record, "process") or record.target
    return (subject, 1) if subject else None


def large_read(record: Record) -> Match:
    if not record.event.endswith((".read", ".export")):
        return None
    size = record.details.get("bytes")
    if not isinstance(size, (int, float)) or isinstance(size, bool) or size < 0:
        return None
    return (record.on_behalf_of or record.actor, int(size))


def credential_theft(record: Record) -> Match:
    if record.event not in THEFT_EVENTS:
        return None
    subject = record.target or _text(record, "user_id") or record.actor
    return (subject, 1)


def repeated_denies(record: Record) -> Match:
    if record.event not in DENY_EVENTS and record.outcome != "denied":
        return None
    subject = _text(record, "subject", "identity", "actor", "peer") or record.on_behalf_of or record.actor
    return (subject, _amount(record))


def witness_mismatch(record: Record) -> Match:
    return (record.target or record.actor, 1) if record.event == WITNESS_EVENT else None


def pairing_failures(record: Record) -> Match:
    return ("pairing", 1) if record.event == PAIRING_ATTEMPT and record.outcome in FAILURE_OUTCOMES else None


def plugin_faults(record: Record) -> Match:
    if record.event != PLUGIN_KILLED:
        return None
    return (record.target or _text(record, "plugin") or record.actor, 1)


def verify_failed(record: Record) -> Match:
    if record.event != VERIFY_FAILED_EVENT or record.actor != ALERT_ACTOR:
        return None
    return (record.target or "audit.db", 1)


RULES: Final[dict[str, Callable[[Record], Match]]] = {
    "failed_logins_account": failed_logins_account, "failed_logins_source": failed_logins_source,
    "unknown_certs": unknown_certs, "rate_limited": rate_limited, "crash_loop": crash_loop,
    "large_read": large_read, "repeated_denies": repeated_denies, "credential_theft": credential_theft,
    "witness_mismatch": witness_mismatch, "pairing_failures": pairing_failures, "plugin_faults": plugin_faults,
    "verify_failed": verify_failed,
}


@dataclass(slots=True)
class Alert:
    """One alert. ``id`` is the sequence number of its ``alert.<rule>`` record (None until durable)."""

    rule: str
    subject: str
    count: int
    threshold: int
    window_s: float
    opened: float
    last_seen: float
    first_seq: int
    last_seq: int
    id: int | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "rule": self.rule, "subject": self.subject, "count": self.count,
                "threshold": self.threshold, "window_s": self.window_s, "opened": self.opened,
                "last_seen": self.last_seen, "first_seq": self.first_seq, "last_seq": self.last_seq}

    def record(self, now: float) -> Record:
        """The ``alert.<rule>`` record announcing this alert (appended like any other)."""
        return Record(seq=0, time=now, actor=ALERT_ACTOR, event=f"alert.{self.rule}", outcome="open",
                      target=self.subject,
                      details={"rule": self.rule, "subject": self.subject, "count": self.count,
                               "threshold": self.threshold, "window_s": self.window_s,
                               "first_seq": self.first_seq, "last_seq": self.last_seq})


def alert_of(record: Record) -> Alert | None:
    """The open alert an ``alert.<rule>`` record announced, or None if ``record`` is not one: the
    inverse of :meth:`Alert.record`, with the record's sequence number as the alert's id."""
    if record.actor != ALERT_ACTOR or not record.event.startswith("alert.") or record.outcome != "open":
        return None
    d = record.details
    rule, subject = d.get("rule"), d.get("subject")
    if record.event != f"alert.{rule}" or rule not in RULES or not isinstance(subject, str):
        return None
    numbers = [d.get(k) for k in ("count", "threshold", "first_seq")]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        return None
    window = d.get("window_s")
    last_seq = d.get("last_seq")
    return Alert(rule=rule, subject=subject, count=int(d["count"]), threshold=int(d["threshold"]),
                 window_s=float(window) if isinstance(window, (int, float)) else 0.0,
                 opened=record.time, last_seen=record.time, first_seq=int(d["first_seq"]),
                 last_seq=last_seq if isinstance(last_seq, int) else record.seq, id=record.seq)

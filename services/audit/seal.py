"""The audit service's seal state: fetching the keys, opening and verifying the log, wiping it all.

:class:`SealMixin` is mixed into :class:`~.service.Audit`, which owns and initialises the state
declared here and starts the background tasks (:meth:`SealMixin._keeper`, :meth:`SealMixin._watch`).
Contract:

- Keys come from keyvault over the mesh only (``audit-hmac``, from which the database key and the
  details-hash key are derived; ``audit-signing``, the Ed25519 checkpoint key). They live in
  bytearrays here only and are wiped by :meth:`SealMixin._seal` (on ``security.sealed`` from
  keyvault, and at stop).
- :meth:`SealMixin._try_unseal` moves ``state`` from ``sealed`` to ``ok`` (the records after the saved
  verified anchor checked, with their consistency to the trusted checkpoint, and the open alerts
  restored from the anchor: :mod:`.anchor`; without a usable anchor the whole log in one streamed
  pass, :mod:`.scan`, which also rebuilds the open alerts; then the whole log in the background,
  a failure stopping appends with the ``verify_failed`` alert), ``tampered`` (it logs the first
  bad record and never rewrites the trusted copy to make a bad log pass) or ``failed`` (the
  database cannot be opened). Failing to reach keyvault leaves it ``sealed``.
- While sealed the keeper retries with a delay growing from :data:`KEY_RETRY_MIN_S` to
  :data:`KEY_RETRY_MAX_S`, and at once on ``security.unsealed``; once unsealed it signs a
  checkpoint every :data:`~.writer.CHECKPOINT_EVERY_S` seconds when records arrived since.
- Rotation of ``audit-hmac``: on ``security.key_rotated`` the open database is re-keyed to the new
  version (``PRAGMA rekey``) and new details are hashed with it; if the rotation happened while
  audit was stopped or sealed, unsealing finds the older version that opens the database and
  re-keys it. Hashed detail fields of older records stay hashed under the older version (they can
  no longer be matched against new ones). ``audit-signing`` is not rotated: keyvault refuses it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import structlog

from shared import SEALED, MeshConfig, MeshError, MeshHome, Readiness
from shared.crypto import derive_subkey, wipe
from shared.keeper import LOCKED_REASON, follow_events_of, keep_unsealed, without_keys
from shared.keystore import Move, begin_move, choose_keystore

from .alerts import ALERT_ACTOR, VERIFY_FAILED_EVENT, Alert
from .anchor import (
    ANCHOR_EVERY_RECORDS,
    Anchor,
    AnchorUnusable,
    StartReport,
    anchored_state,
    decode_anchor,
    encode_anchor,
    resume,
)
from .chain import Checkpoint, LogHead, Record, encode_record, public_key_of
from .errors import TamperError
from .merkle import leaf_hash
from .pages import TREES
from .sanitize import sanitize_details
from .scan import Cancelled, PinnedSlot, scan, verify_report
from .store import AuditStore, StoreError, db_path
from .witness_tree import WitnessTree
from .writer import CHECKPOINT_EVERY_S, WriterMixin

log = structlog.get_logger("audit")  # one logger name for the whole service, as before the split

KEY_RETRY_MIN_S: Final = 1.0            #: first retry of the key fetch while sealed
KEY_RETRY_MAX_S: Final = 60.0           #: keyvault rate-limits and audits each fetch: back off
KEY_CALL_TIMEOUT_S: Final = 5.0
MIB: Final = 1 << 20
LEGACY_SLOT: Final = "audit-checkpoint"  #: the trusted checkpoint's file in <home>/keys before anchors moved out


class SealMixin(WriterMixin):
    """Unsealing (keys, open, verify) and sealing (final checkpoint, close, wipe) of the audit log."""

    # Owned and initialised by the service (Audit.__init__, Service.__init__ for ``mesh``).
    home: MeshHome
    config: MeshConfig
    mesh: Any
    public_key: bytes | None
    _db_key: bytearray | None
    _hash_key: bytearray | None
    #: The database key of an older ``audit-hmac`` version, held only while unsealing re-keys.
    _older_db_key: bytearray | None = None
    _unseal_lock: asyncio.Lock
    _wake: asyncio.Event
    #: Why the service is sealed: the answer of its last key fetch (None once it has its keys).
    without_keys: Readiness | None = None
    _witness_lock: threading.Lock
    _publish: Callable[[str, Any], Awaitable[None]]
    #: What the last start verified (records read, from which sequence number), for health and tests.
    start_report: StartReport | None = None
    #: The background pass of the whole log after the last start: ``{state: running|ok|failed, ...}``.
    background: dict[str, Any] | None = None
    _background_cancel: threading.Event | None = None
    _background_task: asyncio.Task[None] | None = None
    _anchored: int | None = None     #: the tree size of the anchor saved last in this run
    _start_trusted: Checkpoint | None = None  #: the trusted checkpoint the last start verified against

    async def _keeper(self) -> None:
        await keep_unsealed(self._wake, lambda: self.state == "sealed", self._try_unseal, self._tick,
                            period=CHECKPOINT_EVERY_S, retry_min=KEY_RETRY_MIN_S, retry_max=KEY_RETRY_MAX_S)

    async def _watch(self, subscription: Any) -> None:
        await follow_events_of("keyvault", subscription, self._on_security_event)

    async def _on_security_event(self, topic: str, body: Any) -> None:
        if topic == "security.unsealed":
            self._wake.set()
        elif topic == "security.key_rotated" and isinstance(body, dict) and body.get("purpose") == "audit-hmac":
            await self.rotate_db_key()
        elif topic == "security.sealed":
            await self._seal("security.sealed")

    async def _fetch_key(self, purpose: str, version: int | None = None) -> tuple[int, bytearray]:
        body: dict[str, Any] = {"purpose": purpose} if version is None else {"purpose": purpose, "version": version}
        reply = await self.mesh.call("keyvault.keys.get", body, timeout=KEY_CALL_TIMEOUT_S)
        # The reply's bytes object cannot be wiped (shared/_crypto.py); the copy we keep can.
        return int(reply["version"]), bytearray(reply["key"])

    def _open_store(self, path: Path, key: bytearray) -> AuditStore:
        """Open the database with ``key``; when unsealing found it still under an older ``audit-hmac``
        version (:meth:`_older_keys_if_needed`: the rotation happened while audit was stopped or
        sealed), open it with that version's key and re-key it to ``key``."""
        if self._older_db_key is None:
            return AuditStore.open(path, key)
        store = AuditStore.open(path, self._older_db_key)
        try:
            store.rekey(key)
        except BaseException:
            store.close()
            raise
        log.warning("audit_db_rekeyed", reason="audit-hmac was rotated")
        return store

    async def _older_keys_if_needed(self, version: int, key: bytearray) -> None:
        """When the current version's database key does not open the database, find the older one
        that does (a rotation while audit was stopped or sealed)."""
        db_key = derive_subkey(key, "audit-db")
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: AuditStore.open(db_path(self.home), db_key).close())
            return
        except StoreError:
            await self._older_keys(version)
        finally:
            wipe(db_key)

    async def _older_keys(self, version: int) -> None:
        """Derive the database keys of the ``audit-hmac`` versions before ``version``, newest first,
        for :meth:`_open_store` (only the one that opens the database is kept)."""
        path = db_path(self.home)
        for older in range(version - 1, 0, -1):
            _, key = await self._fetch_key("audit-hmac", older)
            try:
                db_key = derive_subkey(key, "audit-db")
            finally:
                wipe(key)
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, lambda k=db_key: AuditStore.open(path, k).close())
            except StoreError:
                wipe(db_key)
                continue
            self._older_db_key = db_key
            return

    async def rotate_db_key(self) -> None:
        """``security.key_rotated`` for ``audit-hmac``: re-key the open database to the new version and
        hash new details with it. Appends wait meanwhile (the write lock)."""
        async with self._write_lock:
            if self.state != "ok" or self.store is None:
                return  # the next unseal opens (and if need be re-keys) with the current version
            try:
                _, hmac_key = await self._fetch_key("audit-hmac")
            except MeshError as exc:
                log.warning("rotated_key_not_fetched", purpose="audit-hmac", reason=exc.code)
                return
            try:
                db_key, hash_key = derive_subkey(hmac_key, "audit-db"), derive_subkey(hmac_key, "audit-details")
            finally:
                wipe(hmac_key)
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.store.rekey, db_key)
            except StoreError as exc:
                wipe(db_key)
                wipe(hash_key)
                log.error("audit_db_rekey_failed", reason=exc.message)
                return
            for old in (self._db_key, self._hash_key):
                if old is not None:
                    wipe(old)
            self._db_key, self._hash_key = db_key, hash_key
            log.warning("audit_db_rekeyed", reason="audit-hmac was rotated")

    async def _try_unseal(self) -> bool:
        """Fetch the keys, open and verify the log. True when the service is no longer sealed."""
        async with self._unseal_lock:
            if self.state != "sealed":
                return True
            try:
                hmac_version, hmac_key = await self._fetch_key("audit-hmac")
                _, self._sign_key = await self._fetch_key("audit-signing")
                self._older_db_key = None
                if hmac_version > 1 and db_path(self.home).exists():
                    await self._older_keys_if_needed(hmac_version, hmac_key)
            except MeshError as exc:
                log.info("sealed", reason=exc.code, detail=exc.message)
                self.without_keys = without_keys(exc, keys_from="keyvault")
                return False
            self.without_keys = None
            try:
                self._db_key = derive_subkey(hmac_key, "audit-db")
                self._hash_key = derive_subkey(hmac_key, "audit-details")
            finally:
                wipe(hmac_key)
            self.public_key = public_key_of(self._sign_key)
            fingerprint = hashlib.sha256(self.public_key).hexdigest()[:16]
            try:
                self.slot, warning = choose_keystore(self.config.keyvault, self.home,
                                                     f"audit-checkpoint:{fingerprint}")
                # An older version kept the trusted checkpoint in the home, where restoring an older
                # home rolled it back with the log: it moves to the slot (off the home) first.
                move = begin_move(self.home.keys / LEGACY_SLOT, self.slot, "audit's trusted checkpoint")
            except MeshError as exc:
                self.state, self.problem = "failed", exc.message
                log.error("checkpoint_slot_unusable", reason=exc.message)
                return True
            if warning:
                log.warning("checkpoint_slot_warning", warning="trusted checkpoint protected by file permissions only")
            loop = asyncio.get_running_loop()
            try:
                store = await loop.run_in_executor(None, self._open_store, db_path(self.home), self._db_key)
            except StoreError as exc:
                self.state, self.problem = "failed", exc.message
                log.error("audit_db_unusable", reason=exc.message)
                return True
            try:
                head, latest, trusted, tree, report = await loop.run_in_executor(None, self._verify_start, store)
            except TamperError as exc:
                store.close()
                self.state, self.problem = "tampered", exc.message
                log.error("audit_log_tampered", first_bad=exc.sequence, reason=exc.message)
                return True
            except StoreError as exc:  # a damaged page (DamagedError names it): the log cannot be read
                store.close()
                self.state, self.problem = "failed", exc.message
                log.error("audit_db_unusable", reason=exc.message)
                return True
            if self._older_db_key is not None:
                wipe(self._older_db_key)
                self._older_db_key = None
            self.store, self.head, self.latest, self.state, self.problem = store, head, latest, "ok", None
            self.witness_tree, self.start_report, self._anchored = tree, report, None
            self._start_trusted = trusted
            log.info("unsealed", size=head.size, checkpoint_size=latest.tree_size if latest else 0,
                     verified_from=report.from_seq, records_read=report.records_read, full=report.full)
            if move is not None:
                await self._record_move(move)
            if latest is not None and (trusted is None or trusted.tree_size < latest.tree_size):
                await self._save_trusted(latest)  # a crash came between the checkpoint and the slot update
            async with self._write_lock:
                await self._anchor_locked()  # the next start goes on from here
            if report.full:  # nothing older than what the start read: no background pass to run
                self.background = {"state": "ok", "size": report.size, "first_bad": None}
            else:
                self._start_background()
            return True

    # -- what a start verifies, and the background pass -------------------------------------

    def _verify_start(self, store: AuditStore) -> tuple[LogHead, Checkpoint | None, Checkpoint | None, WitnessTree,
                                                         StartReport]:
        """The start's verification (blocking): the records after the saved anchor and their consistency
        with the trusted checkpoint (:func:`.anchor.resume`), or the whole log when there is no usable
        anchor (:meth:`_verify`). Raises :class:`TamperError` / :class:`StoreError` as :meth:`_verify`."""
        assert self.public_key is not None and self.slot is not None
        # A byte changed on disk in the old part is found here when the file is small enough to read
        # within the start's budget; a larger file has its pages checked first by the background pass.
        limit = self.config.audit.start_page_check_mib * MIB
        pages = limit > 0 and store.file_bytes() <= limit
        if pages:
            store.check_pages()  # DamagedError (a StoreError) names the pages: the start fails
        try:
            resumed = resume(store, self.public_key, self.slot, self.alerts.engine.rules)
        except AnchorUnusable as exc:
            if str(exc) != "no saved anchor":
                log.warning("anchor_unusable", reason=str(exc), hint="verifying the whole log at start instead")
            tree = WitnessTree()
            head, latest, trusted = self._verify(store, tree)
            return head, latest, trusted, tree, StartReport(0, head.size, head.size, True, pages)
        reopened = self.alerts.engine.adopt(resumed.replay)
        if reopened:
            log.warning("alerts_reopened", open=reopened)
        report = dataclasses.replace(resumed.report, pages_checked=pages)
        return resumed.head, resumed.latest, resumed.trusted, resumed.tree, report

    def _start_background(self) -> None:
        """Verify the whole log in the background (:func:`.scan.verify_report`, its own connection),
        now that the service is ready; a failure stops appends and raises an alert."""
        if self._background_cancel is not None:
            self._background_cancel.set()
        cancel = self._background_cancel = threading.Event()
        self.background = {"state": "running"}
        self._background_task = asyncio.create_task(self._background_verify(cancel), name="audit-background-verify")

    async def _background_verify(self, cancel: threading.Event) -> None:
        assert self._db_key is not None and self.public_key is not None and self.slot is not None
        # Against the trusted checkpoint this start verified (see PinnedSlot), not the live slot.
        args = (db_path(self.home), bytes(self._db_key), self.public_key, PinnedSlot(self._start_trusted), cancel)
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, verify_report, *args)
        except Cancelled:
            return
        except StoreError as exc:
            result = {"ok": False, "size": None, "first_bad": None, "error": exc.message, "damaged": {"error": True}}
        if cancel.is_set() or cancel is not self._background_cancel:
            return
        self.background = {"state": "ok" if result["ok"] else "failed", "size": result.get("size"),
                           "first_bad": result.get("first_bad")}
        if result["ok"]:
            log.info("audit_verified_in_background", size=result["size"])
            return
        await self._verification_failed(result, "background")

    async def _verification_failed(self, result: dict[str, Any], source: str) -> None:
        """A whole-log verification failed (the background pass, ``audit.verify``): refuse appends
        from now on (``tampered``, or ``failed`` when the database is damaged), and record why with its
        ``verify_failed`` alert, the last records audit writes, published on ``alerts.verify_failed``."""
        fired: list[Alert] = []
        async with self._write_lock:
            if self.state != "ok":
                return
            damaged = bool(result.get("damaged"))
            self.state, self.problem = ("failed" if damaged else "tampered"), str(result["error"])
            if damaged:
                log.error("audit_db_unusable", reason=self.problem, found_by=source)
            else:
                log.error("audit_log_tampered", first_bad=result.get("first_bad"), reason=self.problem, found_by=source)
            fired = await self._record_failure_locked(result, source, damaged)
        for alert in fired:
            try:
                await self._publish(f"alerts.{alert.rule}", alert.to_wire())
            except MeshError as exc:
                log.warning("alert_not_published", id=alert.id, rule=alert.rule, reason=exc.code)

    async def _record_failure_locked(self, result: dict[str, Any], source: str, damaged: bool) -> list[Alert]:
        # Written past the refusal (the state is no longer ok): only these records, in one transaction.
        if self.head is None or self.store is None or self._hash_key is None:
            return []
        raw: dict[str, Any] = {"source": source, "problem": str(result["error"])[:512], "damaged": damaged}
        for name in ("first_bad", "size"):
            if isinstance(result.get(name), int):
                raw[name] = result[name]
        now = time.time()
        details = sanitize_details(raw, self._hash_key, VERIFY_FAILED_EVENT)
        backup = self.head.copy()
        entries = [self.head.append(time=now, actor=ALERT_ACTOR, event=VERIFY_FAILED_EVENT, outcome="failure",
                                    target="audit.db", details=details)]
        try:
            fired = self.alerts.engine.observe([entries[0].record])
        except Exception as exc:  # noqa: BLE001 - the failure record is written regardless
            log.error("alert_rules_failed", error_type=type(exc).__name__)
            fired = []
        for alert in fired:
            r = alert.record(now)
            entries.append(self.head.append(time=r.time, actor=r.actor, event=r.event, outcome=r.outcome,
                                            target=r.target, details=r.details))
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.store.append, entries, None)
        except StoreError as exc:
            self.head = backup
            for alert in fired:
                self.alerts.engine.discard(alert)
            log.error("verify_failure_not_recorded", reason=exc.message)
            return []
        self.alerts.engine.replay.feed([entry.record for entry in entries])
        for alert, entry in zip(fired, entries[1:], strict=True):
            self.alerts.engine.opened(alert, entry.record.seq)
            log.warning("alert", id=alert.id, rule=alert.rule, count=alert.count, threshold=alert.threshold)
        return fired

    async def _tick(self) -> None:
        """The keeper's period: sign a checkpoint when records arrived, and save a new anchor once the
        log grew :data:`.anchor.ANCHOR_EVERY_RECORDS` since the last."""
        async with self._write_lock:
            await self._checkpoint_locked()
            if self.head is not None and self.head.size - (self._anchored or 0) >= ANCHOR_EVERY_RECORDS:
                await self._anchor_locked()

    async def _anchor_locked(self) -> None:
        """Save the anchor (:mod:`.anchor`) at a checkpoint of the whole head; caller holds the write lock.
        A failure is logged: the saved anchor only lags (the next start reads more), it is never wrong."""
        if self.state != "ok" or self.head is None or self.store is None:
            return
        await self._checkpoint_locked()
        latest = self.latest
        if latest is None or latest.tree_size != self.head.size or self._anchored == latest.tree_size:
            return
        loop = asyncio.get_running_loop()
        try:
            blob = await loop.run_in_executor(None, self._anchor_blob, latest)
            await loop.run_in_executor(None, self.store.put_anchor, latest.tree_size, blob)
        except (StoreError, TamperError) as exc:
            log.error("anchor_not_saved", reason=exc.message, tree_size=latest.tree_size)
            return
        self._anchored = latest.tree_size

    def _anchor_blob(self, checkpoint: Checkpoint) -> bytes:
        # Blocking: the witness tree catches up with the records written since (read back) first.
        tree, store, head = self.witness_tree, self.store, self.head
        assert tree is not None and store is not None and head is not None
        size = checkpoint.tree_size
        with self._witness_lock:
            if tree.size < size:
                tree.extend(leaf_hash(encode_record(entry.record)) for entry in store.entries(tree.size, size))
            if tree.size != size or head.frontier.root() != checkpoint.root:
                raise TamperError(f"the log head or witness tree is not at the checkpoint of tree size {size}")
            blocks, tail = tree.state()
            anchor = Anchor(checkpoint, head.frontier.nodes, tree.floor, blocks, tuple(tail),
                            self.alerts.engine.replay.to_wire())
            data = encode_anchor(anchor)
        assert self.public_key is not None
        anchored_state(decode_anchor(data), self.public_key)  # what the next start will check, checked now
        return data

    async def _record_move(self, move: Move) -> None:
        """Record the move of the trusted checkpoint off the home, then remove the old copy. Until
        the record is durable the old copy stays, so the next start records the move again."""
        assert self._hash_key is not None
        details = sanitize_details({"anchor": "trusted checkpoint", "source": str(move.old),
                                    "destination": move.new}, self._hash_key, "audit.anchor_moved")
        record = Record(seq=0, time=time.time(), actor="audit", event="audit.anchor_moved", outcome="ok",
                        details=details)
        try:
            await self._enqueue([record])
        except MeshError as exc:
            log.error("anchor_move_not_recorded", reason=exc.message)
            return
        move.finish()
        log.warning("anchor_moved", anchor="trusted checkpoint", destination=move.new)

    def _verify(self, store: AuditStore,
                tree: WitnessTree | None = None) -> tuple[LogHead, Checkpoint | None, Checkpoint | None]:
        """Verify the whole log in one streamed read that also rebuilds the open alerts and, when
        ``tree`` is given, feeds it every verified leaf (the witness tree audit.checkpoint proves from).

        Only a verified log is evidence: the open alerts come back from it (a restart forgets
        nothing). The rebuild reads the verification stream itself, so the log is read once and
        never held; it replaces the open alerts only after its loop, and the stream raises before
        ending when anything is wrong, so a log that fails verification rebuilds nothing."""
        assert self.public_key is not None and self.slot is not None
        with scan(store, self.public_key, self.slot) as verified:
            if tree is not None:
                verified.feed(tree.append)
            try:
                reopened = self.alerts.engine.rebuild(verified.records())
            except Exception as exc:
                if verified.failed:  # the log (or reading it) failed, not the rebuild
                    raise
                # The log may well be fine: losing the open alerts must not seal audit.
                log.error("alerts_not_rebuilt", error_type=type(exc).__name__)
            else:
                if reopened:
                    log.warning("alerts_reopened", open=reopened)
            head = verified.finish()  # whatever a failed rebuild left unread is verified all the same
            return head, verified.latest, verified.trusted

    async def _seal(self, reason: str) -> None:
        if self._background_cancel is not None:
            self._background_cancel.set()  # the background pass stops at its next record
        async with self._write_lock:
            if self.state == "ok":
                await self._checkpoint_locked()  # so a clean stop leaves every record under a checkpoint
                await self._anchor_locked()      # ... and the next start reads only what comes after
            if self.store is not None:
                self.store.close()
            for key in (self._db_key, self._sign_key, self._hash_key):
                if key is not None:
                    wipe(key)
            self.store = self.head = self._db_key = self._sign_key = self._hash_key = self.witness_tree = None
            TREES.forget(db_path(self.home))  # verified export trees live only while unsealed
            self.state, self.problem = "sealed", reason
            self.without_keys = Readiness(SEALED, LOCKED_REASON, "keyvault")
            log.info("sealed", reason=reason)

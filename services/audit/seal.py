"""The audit service's seal state: fetching the keys, opening and verifying the log, wiping it all.

:class:`SealMixin` is mixed into :class:`~.service.Audit`, which owns and initialises the state
declared here and starts the background tasks (:meth:`SealMixin._keeper`, :meth:`SealMixin._watch`).
Contract:

- Keys come from keyvault over the mesh only (``audit-hmac``, from which the database key and the
  details-hash key are derived; ``audit-signing``, the Ed25519 checkpoint key). They live in
  bytearrays here only and are wiped by :meth:`SealMixin._seal` (on ``security.sealed`` from
  keyvault, and at stop).
- :meth:`SealMixin._try_unseal` moves ``state`` from ``sealed`` to ``ok`` (the log verified as
  :mod:`.vetting` says: what follows the saved anchor, or the whole log; then the whole log in the
  background), ``tampered`` (it logs the first bad record and never rewrites the trusted copy to
  make a bad log pass) or ``failed`` (the database cannot be opened). Failing to reach keyvault
  leaves it ``sealed``.
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
import hashlib
import threading
import time
from pathlib import Path
from typing import Any, Final

import structlog

from shared import SEALED, MeshError, Readiness
from shared.crypto import derive_subkey, wipe
from shared.keeper import LOCKED_REASON, follow_events_of, keep_unsealed, without_keys
from shared.keystore import Move, begin_move, choose_keystore

from .anchor import (
    ANCHOR_EVERY_RECORDS,
    Anchor,
    anchored_state,
    decode_anchor,
    encode_anchor,
)
from .chain import Checkpoint, Record, encode_record, public_key_of
from .errors import TamperError
from .merkle import leaf_hash
from .pages import TREES
from .sanitize import sanitize_details
from .store import AuditStore, StoreError, db_path
from .vetting import VettingMixin
from .writer import CHECKPOINT_EVERY_S

log = structlog.get_logger("audit")  # one logger name for the whole service, as before the split

KEY_RETRY_MIN_S: Final = 1.0            #: first retry of the key fetch while sealed
KEY_RETRY_MAX_S: Final = 60.0           #: keyvault rate-limits and audits each fetch: back off
KEY_CALL_TIMEOUT_S: Final = 5.0
LEGACY_SLOT: Final = "audit-checkpoint"  #: the trusted checkpoint's file in <home>/keys before anchors moved out


class SealMixin(VettingMixin):
    """Unsealing (keys, open, verify) and sealing (final checkpoint, close, wipe) of the audit log."""

    # Owned and initialised by the service (Audit.__init__, Service.__init__ for ``mesh``); the rest
    # is declared by VettingMixin and WriterMixin.
    mesh: Any
    #: The database key of an older ``audit-hmac`` version, held only while unsealing re-keys.
    _older_db_key: bytearray | None = None
    _unseal_lock: asyncio.Lock
    _wake: asyncio.Event
    #: Why the service is sealed: the answer of its last key fetch (None once it has its keys).
    without_keys: Readiness | None = None
    _witness_lock: threading.Lock
    _anchored: int | None = None     #: the tree size of the anchor saved last in this run

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
                self.failure_slot, _ = choose_keystore(self.config.keyvault, self.home,
                                                       f"audit-verify-failed:{fingerprint}")
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

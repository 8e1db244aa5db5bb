"""The RocksDB key-value engine: sealed entries in one RocksDB database, by namespace and name.

Contracts:

- Encrypted at rest (DESIGN.md invariant 5): RocksDB sees only keyed hashes as keys and sealed
  blobs as values; namespaces, names and values never reach a file (SST, WAL, MANIFEST, LOG) in
  the clear. The layout is described in :mod:`.sealing`: ``b"e" || version || ns_tag || name_tag``
  keys, ``header || AES-256-GCM(namespace, name, value)`` values bound to their key, in the entry
  format of their key version (a new version takes the newest format; one that holds entries keeps
  theirs, so rotation is what moves old entries to the new format). The directory
  is 0700; RocksDB's info LOG holds options and statistics only and is kept small.
- Durable (invariant 9): every write is one RocksDB ``WriteBatch``, on disk before the call returns
  (:mod:`.database`: written, then the WAL synced with the GIL released), so it survives kill -9.
  A batch is all or nothing, and no get answers from it before its sync is done. A failed sync
  is final: every later call is refused until storage restarts.
- Key versions: writes seal under ``keys.current`` and, in the same batch, delete the name under
  every other held version, so a name is never stored twice. Reads try the current version, then
  the others. :meth:`KvStore.reseal_step` moves entries to the current version one atomic batch at
  a time, so rotation can crash and resume. Entries under a version storage does not hold are
  invisible (their keys cannot even be computed): retire a version only when ``count`` says 0.
- Damage is reported, never repaired: a value that fails its check raises
  :class:`~..core.errors.DamagedError` naming its position (version and tag prefixes), never its bytes.

Scanning costs memory. Names are hashed on disk, so RocksDB has no order to scan by: the first
:meth:`KvStore.scan` of a namespace opens every entry of that namespace (under every held version)
and keeps its names in a sorted in-memory list, which put and delete then keep current. That
first scan costs one decryption per entry; the list costs the namespace's names in memory until
:meth:`KvStore.forget_keys` or :meth:`KvStore.close` drops it; each insert costs O(names).

One :class:`KvStore` owns its directory (RocksDB's LOCK file refuses a second opener).

Threads. Methods are blocking; the service calls them from worker threads, and a lock serialises
them, except the fast path of :meth:`KvStore.get`, which is most of a store's calls and for which
the lock was a twentieth of the time; the service runs gets on threads of their own, beside the
one that writes. That path reads the cached material with no lock when the KeySet is the one it
was made for and unchanged. It changes nothing (a namespace whose material is not made yet sends
it to the lock). Every material it reads is either live or wiped, and a wiped one raises
``ValueError``; a close running on another thread makes rocksdict refuse the read (the close
releases the GIL while it flushes); on either, the get is redone under the lock, where it sees
the seal, the retirement, the new key or the closed store as any locked call would. A get that
overlaps a seal on another thread may thus still answer from what it read before the seal; none
that starts after it does. A get that finds a name of the batch whose sync is running (a write
holds the lock through its sync, :mod:`.database`) is redone under the lock too, so it answers
only once that batch is durable.
"""

from __future__ import annotations

import bisect
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Final

import rocksdict

from shared import BadRequest, Unavailable

from ..core.errors import DamagedError, MissingKeyError
from ..core.keys import KeySet
from ..core.namespace import Namespace
from . import sealing, settings
from .database import CHUNK, Database

__all__ = ["MAX_BATCH_ITEMS", "MAX_NAME_BYTES", "MAX_SCAN_LIMIT", "MAX_VALUE_BYTES", "KvStore"]

MAX_NAME_BYTES: Final = 1024
MAX_VALUE_BYTES: Final = 512 * 1024
MAX_SCAN_LIMIT: Final = 1000
#: Items of one put_many: bounds the batch (and the memory it takes) to about 512 MiB.
MAX_BATCH_ITEMS: Final = 1000
#: Problems verify lists one by one before it only counts them.
MAX_PROBLEMS: Final = 1000


def _check_name(name: bytes, what: str = "record name") -> None:
    if not isinstance(name, bytes) or not 1 <= len(name) <= MAX_NAME_BYTES:
        raise BadRequest(f"a {what} is 1 to {MAX_NAME_BYTES} bytes")


class KvStore:
    """One open RocksDB database of sealed entries. Use :meth:`open`; close with :meth:`close`."""

    def __init__(self, path: Path) -> None:
        """Use :meth:`open`."""
        self.path = path
        self._lock = threading.RLock()
        self._rocks = Database(path, self._lock)
        # version -> what that version seals and names entries with (sealing.VersionMaterial), derived
        # once while unsealed; wiped by forget_keys, and by _check_keys for a version the KeySet no longer
        # holds or whose key it replaced. _for_keys / _for_generation: the KeySet (and its generation)
        # the cache was last checked against; _order: that KeySet's versions in search order, and
        # _hot their materials in the same order (made as soon as the KeySet is checked).
        self._materials: dict[int, sealing.VersionMaterial] = {}
        self._for_keys: KeySet | None = None
        self._for_generation = -1
        self._order: list[int] = []
        self._hot: list[sealing.VersionMaterial] = []
        self._index: dict[Namespace, list[bytes]] = {}
        # The versions each namespace's index was built from: a version the KeySet gained since (an
        # older key fetched late) may hold names the index lacks, so it is rebuilt.
        self._indexed: dict[Namespace, frozenset[int]] = {}
        # version -> where the last reseal batch stopped, so a step does not re-skip the tombstones
        # of the batches before it.
        self._reseal_at: dict[int, bytes] = {}

    @classmethod
    def open(cls, path: Path) -> KvStore:
        """Open (creating it 0700 when missing) the database in directory ``path``. Raises
        :class:`~shared.Unavailable` when RocksDB refuses (locked by another opener, corrupt)."""
        return cls(path)

    def close(self) -> None:
        """Forget keys and names, flush and close (idempotent)."""
        with self._lock:
            self.forget_keys()
            self._rocks.close()

    def __enter__(self) -> KvStore:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def forget_keys(self) -> None:
        """Wipe every key version's cached material and drop the name index (the mesh is sealing)."""
        with self._lock:
            for material in self._materials.values():
                material.wipe()
            self._materials.clear()
            self._for_keys, self._for_generation, self._order, self._hot = None, -1, [], []
            self._index.clear()
            self._indexed.clear()
            self._reseal_at.clear()

    # -- records ------------------------------------------------------------------------

    def put(self, keys: KeySet, ns: Namespace, name: bytes, value: bytes) -> None:
        """Store ``value`` as ``name`` in ``ns``, durably (see :meth:`put_many`)."""
        self.put_many(keys, [(ns, name, value)])

    def put_many(self, keys: KeySet, items: list[tuple[Namespace, bytes, bytes]]) -> None:
        """Store every ``(ns, name, value)`` in one synced batch under ``keys.current``, deleting each
        name under the other held versions; a later item of the same name wins. All or nothing."""
        if len(items) > MAX_BATCH_ITEMS:
            raise BadRequest(f"at most {MAX_BATCH_ITEMS} records are written at once")
        sealing.check_items(items, MAX_NAME_BYTES, MAX_VALUE_BYTES)
        with self._lock:
            self._search_order(keys)
            current, *others = self._hot
            batch = rocksdict.WriteBatch(raw_mode=True)
            current.seal_into(batch.put, items)
            for other in others:
                for ns, name, _ in items:
                    batch.delete(other.rocks_key(ns, name))
            self._rocks.write(batch, items)
            if self._index:  # only namespaces scanned since the keys came have an index to keep
                for ns, name, _ in items:
                    names = self._index.get(ns)
                    if names is not None:
                        at = bisect.bisect_left(names, name)
                        if at == len(names) or names[at] != name:
                            names.insert(at, name)

    def get(self, keys: KeySet, ns: Namespace, name: bytes) -> bytes | None:
        """The value of ``name`` in ``ns``, or None. :class:`DamagedError` if it fails its check."""
        if name.__class__ is not bytes or not 0 < len(name) <= MAX_NAME_BYTES:
            _check_name(name)
        # The fast path takes no lock (module notes, "Threads"): when ``keys`` is the KeySet the cached
        # material was checked against, unchanged since, read with that material. The stamps are read
        # before the material list, which _check_keys replaces before it stamps. It is the locked path
        # below with each version's reader of the namespace (VersionMaterial.readers) looked up here and
        # called directly: two calls less on every get.
        # What it read is returned unless the batch being synced meanwhile (.database) writes this
        # name: then it may be a value not yet durable, and the locked path waits for the sync.
        if (keys is self._for_keys and keys.generation == self._for_generation and (hot := self._hot)
                and (db_get := self._rocks.get) is not None):
            where = (ns.owner, ns.subject, ns.category)
            try:
                found: bytes | None = None
                complete = True
                for material in hot:
                    read = material.readers.get(where)
                    if read is None:
                        complete = False  # a namespace seen for the first time: its material is made under the lock
                        break
                    found = read(db_get, name)
                    if found is not None:
                        break
                if complete:
                    syncing = self._rocks.in_flight
                    if syncing is None or not syncing.holds(ns, name):
                        return found
            except (ValueError, RuntimeError, rocksdict.DbClosedError):
                # Redone locked: material this read held was wiped by another thread (a seal, a
                # retirement), or a close on another thread holds the database (rocksdict refuses a
                # get meanwhile with "Already mutably borrowed", and after it as closed). Under the
                # lock the read either runs before the close or reports the store closed.
                pass
            except Exception as exc:
                if type(exc) is not Exception:  # ours (DamagedError, ...): not a RocksDB status
                    raise
                raise Unavailable(f"reading the rocksdb store failed: {str(exc)[:200]}") from None
        with self._lock:
            self._search_order(keys)
            db_get = self._rocks.get
            if db_get is None:
                self._rocks.live()  # raises why: a sync failed, or the store is closed
                raise Unavailable("the rocksdb store is closed")
            try:
                for material in self._hot:
                    material.namespace(ns)  # what the read needs, made here under the lock
                    value = material.read(db_get, ns, name)
                    if value is not None:
                        return value
                return None
            except Exception as exc:
                if type(exc) is not Exception:  # ours (DamagedError, ValueError, ...): not a RocksDB status
                    raise
                raise Unavailable(f"reading the rocksdb store failed: {str(exc)[:200]}") from None

    def delete(self, keys: KeySet, ns: Namespace, name: bytes) -> bool:
        """Durably delete ``name`` from ``ns`` under every held version; True if it existed."""
        _check_name(name)
        with self._lock:
            batch = rocksdict.WriteBatch(raw_mode=True)
            for version in self._search_order(keys):
                rocks_key = self._material(keys, version).rocks_key(ns, name)
                if self._rocks.read(rocks_key) is not None:
                    batch.delete(rocks_key)
            if batch.is_empty():
                return False
            self._rocks.write(batch, [(ns, name)])
            names = self._index.get(ns)
            if names is not None:
                at = bisect.bisect_left(names, name)
                if at < len(names) and names[at] == name:
                    del names[at]
            return True

    def scan(self, keys: KeySet, ns: Namespace, prefix: bytes, after: bytes | None,
             limit: int) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """Up to ``limit`` ``(name, value)`` of ``ns`` whose name starts with ``prefix`` and sorts
        strictly after ``after``, by name; and the cursor of the next page (the last name) or None
        when there is no more. The first scan of a namespace builds its name index (module notes)."""
        if not isinstance(prefix, bytes) or len(prefix) > MAX_NAME_BYTES:
            raise BadRequest(f"a name prefix is at most {MAX_NAME_BYTES} bytes")
        if after is not None:
            _check_name(after, "scan cursor")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SCAN_LIMIT:
            raise BadRequest(f"a scan limit is 1 to {MAX_SCAN_LIMIT}")
        with self._lock:
            names = self._names(keys, ns)
            at = bisect.bisect_left(names, prefix)
            if after is not None:
                at = max(at, bisect.bisect_right(names, after))
            page: list[tuple[bytes, bytes]] = []
            while at < len(names) and names[at].startswith(prefix) and len(page) < limit:
                value = self.get(keys, ns, names[at])
                # None only if the KeySet retired the version holding it since: invisible to get too.
                if value is not None:
                    page.append((names[at], value))
                at += 1
            more = at < len(names) and names[at].startswith(prefix)
            return page, (page[-1][0] if more and page else None)

    # -- rotation and checks -------------------------------------------------------------

    def reseal_step(self, keys: KeySet, from_version: int, batch: int = 1000) -> int:
        """Move up to ``batch`` entries (fewer when their values pass 16 MiB) from ``from_version`` to
        ``keys.current`` in one synced batch (opened with the old key, sealed with the new, old deleted);
        how many moved, 0 when none are left. A crash between steps loses nothing: each step is atomic
        and the next resumes. A damaged entry stops rotation with :class:`DamagedError`."""
        if not 1 <= batch <= 10 * CHUNK:
            raise ValueError(f"a reseal batch is 1 to {10 * CHUNK} entries")
        with self._lock:
            new = self._material(keys, keys.current)
            if from_version == keys.current:
                raise ValueError("entries are resealed from a version other than the current one")
            old = self._material(keys, from_version)  # MissingKeyError before anything is read
            prefix = sealing.version_prefix(from_version)
            chunk = self._rocks.range(self._reseal_at.get(from_version, prefix), settings.prefix_end(prefix), batch)
            if not chunk and from_version in self._reseal_at:
                # Before answering "none left", look once from the start of the version.
                del self._reseal_at[from_version]
                chunk = self._rocks.range(prefix, settings.prefix_end(prefix), batch)
            if not chunk:
                return 0
            out = rocksdict.WriteBatch(raw_mode=True)
            moved: list[tuple[Namespace, bytes]] = []
            for rocks_key, blob in chunk:
                ns, name, value = old.open(rocks_key, blob)
                new_rocks_key = new.rocks_key(ns, name)
                # An entry under the current version was written later: never overwrite it with this one.
                if self._rocks.read(new_rocks_key) is None:
                    out.put(new_rocks_key, new.seal(new_rocks_key, ns, name, value))
                out.delete(rocks_key)
                moved.append((ns, name))
            self._rocks.write(out, moved)
            self._reseal_at[from_version] = chunk[-1][0] + b"\x00"
            return len(chunk)

    def count(self, version: int) -> int:
        """How many entries are sealed under ``version`` (one pass over its keys)."""
        prefix = sealing.version_prefix(version)
        return sum(len(chunk) for chunk in self._rocks.chunks(prefix, values=False))

    def verify(self, keys: KeySet) -> list[str]:
        """Open every entry; the problems found, each naming a position, never contents (empty: fine).
        Entries under a version ``keys`` does not hold are counted as one problem per version."""
        problems: list[str] = []
        damaged = 0
        unheld: dict[int, int] = {}
        for chunk in self._rocks.chunks(b""):
            with self._lock:
                for rocks_key, blob in chunk:
                    try:
                        version = sealing.parse_entry_key(rocks_key)[0]
                        if not keys.has(version):
                            unheld[version] = unheld.get(version, 0) + 1
                            continue
                        self._open(keys, version, rocks_key, blob)
                    except DamagedError as exc:
                        damaged += 1
                        if damaged <= MAX_PROBLEMS:
                            problems.append(exc.message)
        if damaged > MAX_PROBLEMS:
            problems.append(f"... and {damaged - MAX_PROBLEMS} more damaged entries")
        for version, n in sorted(unheld.items()):
            problems.append(f"{n} rocksdb entries are sealed under version {version} which storage does not hold")
        return problems

    def checkpoint(self, dest: Path) -> None:
        """A consistent copy of the database in the new directory ``dest`` (for backups). SST files
        are hard-linked when ``dest`` is on the same filesystem; everything in it is sealed."""
        if dest.exists() or dest.is_symlink():
            raise FileExistsError(f"{dest}: a checkpoint goes into a directory that does not exist yet")
        settings.private_dir(dest.parent)
        self._rocks.checkpoint(dest)
        os.chmod(dest, 0o700)

    def import_from(self, source: Path, source_keys: KeySet, keys: KeySet) -> int:
        """Copy every entry of the store directory ``source`` (a restored checkpoint sealed under
        ``source_keys``) into this one, re-sealed under ``keys.current``; how many were copied.

        Nothing is guessed: an entry under a version ``source_keys`` lacks raises
        :class:`~..core.errors.MissingKeyError`, a damaged one :class:`DamagedError`. Each batch is durable
        on its own, so a failure leaves the batches before it; restore into an empty store.
        """
        copied = 0
        with KvStore.open(source) as origin:
            for chunk in origin._rocks.chunks(b""):
                items = []
                for rocks_key, blob in chunk:
                    version = sealing.parse_entry_key(rocks_key)[0]
                    ns, name, value = origin._open(source_keys, version, rocks_key, blob)
                    items.append((ns, name, value))
                self.put_many(keys, items)
                copied += len(items)
        return copied

    def is_empty(self) -> bool:
        """True when the database holds no key at all."""
        return not self._rocks.range(b"", None, 1, values=False)

    # -- internals -----------------------------------------------------------------------

    def _check_keys(self, keys: KeySet) -> None:
        """Check the cached material against ``keys`` (one comparison when nothing changed): wipe
        the material of every version ``keys`` no longer holds, or holds under another key. Works
        from one :meth:`KeySet.snapshot` (the event loop may change the set meanwhile), again until
        the set did not change while it derived: a key replaced or wiped meanwhile may have been
        zeroed under the derivation, and KeySet wipes only after it moved the generation."""
        while not (keys is self._for_keys and keys.generation == self._for_generation):
            generation, current, held = keys.snapshot()
            for version, material in list(self._materials.items()):
                if held.get(version) is not material.key:
                    material.wipe()
                    del self._materials[version]
            order = [current, *sorted((v for v in held if v != current), reverse=True)] if current in held else []
            for version in order:
                if version not in self._materials:
                    self._materials[version] = self._new_material(version, held[version])
            # In this order: get's lock-free path reads the stamps, then the list (module notes, "Threads").
            self._hot = [self._materials[version] for version in order]
            self._for_keys, self._for_generation, self._order = keys, generation, order

    def forget_versions(self, keys: KeySet) -> None:
        """Wipe the material of every version ``keys`` no longer holds (after a retirement) now,
        rather than at the next request."""
        with self._lock:
            self._for_keys = None
            self._check_keys(keys)

    def _material(self, keys: KeySet, version: int) -> sealing.VersionMaterial:
        """The material of ``version`` of ``keys``; :class:`MissingKeyError` when it is not held."""
        self._check_keys(keys)
        if version not in self._materials:
            keys.key(version)  # MissingKeyError when not held; held, it came since the check: check again
            self._for_keys = None
            self._check_keys(keys)
        if (material := self._materials.get(version)) is None:
            raise MissingKeyError(f"storage does not hold version {version} of its rocksdb key")
        return material

    def _new_material(self, version: int, key: bytearray) -> sealing.VersionMaterial:
        """The material of ``version`` in the format its entries are in (:func:`sealing.format_of`
        reads its first few; a version with none is new, and takes the newest format)."""
        prefix = sealing.version_prefix(version)
        first = self._rocks.range(prefix, settings.prefix_end(prefix), sealing.PROBE_ENTRIES)
        return sealing.material(version, key, sealing.format_of(version, key, first))

    def _open(self, keys: KeySet, version: int, rocks_key: bytes, blob: bytes) -> sealing.Entry:
        return self._material(keys, version).open(rocks_key, blob)

    def _search_order(self, keys: KeySet) -> list[int]:
        """The current version first, then the other held ones, newest first (the list is shared:
        never change it)."""
        self._check_keys(keys)
        if not self._order:
            keys.key()  # MissingKeyError: nothing is held
        return self._order

    def _names(self, keys: KeySet, ns: Namespace) -> list[bytes]:
        names = self._index.get(ns)
        if names is None or not self._indexed[ns].issuperset(keys.versions()):
            found: set[bytes] = set()
            for version in self._search_order(keys):
                prefix = self._material(keys, version).namespace(ns).prefix
                for chunk in self._rocks.chunks(prefix):
                    found.update(self._open(keys, version, k, blob).name for k, blob in chunk)
            names = self._index[ns] = sorted(found)
            self._indexed[ns] = frozenset(keys.versions())
        return names

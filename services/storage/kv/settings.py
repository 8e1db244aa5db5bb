"""The RocksDB settings of the key-value store, and the directory and key-range helpers it opens and
reads with.

:func:`options` are the engine's settings (the benchmark's raw rocksdict twin opens with these too);
:func:`store_options` adds the lookup filters the store opens with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import rocksdict

__all__ = ["options", "prefix_end", "private_dir", "store_options"]

_LOG_FILE_BYTES: Final = 256 * 1024
# Lookup filters (store_options): ~1% false positives. The memtable's is a fraction of the write
# buffer: 0.005 of 64 MiB is 320 KiB, about 10 bits per key at the ~250k entries a full buffer holds,
# like the SST filters. Every put sets bits in it, so it is sized to stay in a core's 512 KiB L2
# cache: at 0.02 (1.3 MiB, ~40 bits per key) a synced put cost 0.2-0.3 us more and a get that
# missed the memtable was no faster (issue 18).
_BLOOM_BITS_PER_KEY: Final = 10
_MEMTABLE_BLOOM_RATIO: Final = 0.005


def options() -> rocksdict.Options:
    """The engine's settings (the bench's raw rocksdict twin opens with these too); the store opens
    with :func:`store_options`, which adds the lookup filters."""
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_paranoid_checks(True)
    # Sealed values and hashed keys do not compress; trying only costs CPU.
    opts.set_compression_type(rocksdict.DBCompressionType.none())
    # Synced writes make every acknowledged batch whole in the WAL; a torn tail is a batch that was
    # never acknowledged, and point-in-time recovery drops exactly that.
    opts.set_wal_recovery_mode(rocksdict.DBRecoveryMode.point_in_time())
    opts.set_keep_log_file_num(2)
    opts.set_max_log_file_size(_LOG_FILE_BYTES)
    opts.set_stats_dump_period_sec(0)
    opts.set_max_background_jobs(2)
    return opts


def store_options() -> rocksdict.Options:
    """:func:`options` plus Bloom filters, which keep a get from searching where its key is not.

    Keys are keyed hashes, so they spread uniformly over the key space: every memtable, every L0
    file and every level may hold any key, and a lookup that reaches one that does not hold it pays
    a full search (a skiplist walk of cache misses, or an index search and a data block read).
    Gets that miss somewhere are the rule, not the exception: a store past its write buffer
    (~250k entries) keeps most entries on disk, so most gets first miss the memtable; a name absent
    from the current key version is looked up under each older one held; a name that does not exist
    misses everywhere. With whole-key filters in the memtable (a ``_MEMTABLE_BLOOM_RATIO`` of the
    write buffer, 320 KiB) and in SST files (``_BLOOM_BITS_PER_KEY``, ~1.2 MiB per million entries,
    held with the table readers), such a miss costs a few hashes. The filters hold hashes of the
    keys, which are themselves keyed hashes: nothing about a name or namespace. Files written
    before the filters simply have none and are searched as before.
    """
    opts = options()
    table = rocksdict.BlockBasedOptions()
    table.set_bloom_filter(_BLOOM_BITS_PER_KEY, False)
    opts.set_block_based_table_factory(table)
    opts.set_memtable_prefix_bloom_ratio(_MEMTABLE_BLOOM_RATIO)
    opts.set_memtable_whole_key_filtering(True)
    return opts


def private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents 0700 (mkdir's ``parents`` would use the umask)."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key after every key starting with ``prefix`` (None: no such key)."""
    stripped = prefix.rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else None

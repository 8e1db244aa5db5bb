"""The storage service: the companion's data encrypted at rest (SQLCipher records, RocksDB key-value,
DuckDB analytics, STREAM-encrypted files) in per-caller namespaces, with rotation, verify, backup and
restore. :mod:`.service` composes it; docs/storage.md describes it.
"""

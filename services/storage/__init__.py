"""The storage service: the companion's data encrypted at rest (SQLCipher records, RocksDB key-value,
DuckDB analytics, STREAM-encrypted files) in per-caller namespaces, with rotation, verify, backup and
restore. docs/storage.md describes it.

- :mod:`.service`: :class:`~.service.Storage`, the mesh service: it composes the engines and
  answers the wire, each handler delegating to an engine;
- one package per engine, each with its store, its requests (``engine.py``) and its wire
  messages (``schema.py``): :mod:`.kv`, :mod:`.records`, :mod:`.analytics`, :mod:`.files`, and
  :mod:`.archive` (backups: the archive format and the backup, verify and restore jobs);
- :mod:`.core`: what the engines share (keys, namespaces, errors, worker threads, the sealed
  state, jobs, metering) and the work across them (unseal and seal, rotation).

Imports point one way: service → engines → core.
"""

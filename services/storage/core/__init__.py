"""The storage service's core: what every engine builds on, and what works across all of them.

- :mod:`.errors`: the storage errors (damage, a missing key version, a failing store);
- :mod:`.namespace`: namespaces (whose data, kept apart) and identifiers callers choose;
- :mod:`.keys`: the data keys held in memory, by purpose and version;
- :mod:`.stream`: STREAM, the chunked AES-256-GCM format of files and backup archives;
- :mod:`.state`: where the stores live in the home, and storage's own state file;
- :mod:`.context`: the service state the engines share (keys, worker threads, sealed or not);
- :mod:`.engine`: what an engine is to the rest of storage (its life cycle, whole-store work);
- :mod:`.keeper`: start, unseal, seal and stop, across the engines;
- :mod:`.rotation`: re-encryption after a key rotation, across the engines;
- :mod:`.batching`: group commit; :mod:`.metering`: read metering; :mod:`.jobs`: operator jobs.

Imports point one way: the service (:mod:`..service`) composes the engines, the engines build on
this core, and nothing here imports an engine or the service (tests/test_import_graph.py checks
that storage's modules import no cycle).
"""

"""The storage service's core: what every engine builds on.

- :mod:`.errors`: the storage errors (damage, a missing key version, a failing store);
- :mod:`.namespace`: namespaces (whose data, kept apart) and identifiers callers choose;
- :mod:`.keys`: the data keys held in memory, by purpose and version;
- :mod:`.stream`: STREAM, the chunked AES-256-GCM format of files and backup archives;
- :mod:`.state`: where the stores live in the home, and storage's own state file;
- :mod:`.context`: the service state the engines share (keys, worker threads, sealed or not);
- :mod:`.batching`: group commit; :mod:`.metering`: read metering; :mod:`.jobs`: operator jobs.
"""

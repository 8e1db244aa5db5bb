"""The key-value engine: small values by name in RocksDB, sealed by the application.

- :mod:`.store`: :class:`~.store.KvStore`, the RocksDB database of sealed entries;
- :mod:`.settings`: its RocksDB settings and directory helpers;
- :mod:`.sealing`: the entry formats (keyed hashes as keys, AES-256-GCM values), pure functions;
- :mod:`.engine`: the ``storage.kv.*`` requests over the store;
- :mod:`.schema`: their wire messages.
"""

"""The key-value engine: small values by name in RocksDB, sealed by the application.

- :mod:`.store`: :class:`~.store.KvStore`, the RocksDB database of sealed entries;
- :mod:`.settings`: its RocksDB settings and directory helpers;
- :mod:`.sealing`: the entry formats (keyed hashes as keys, AES-256-GCM values), pure functions;
- :mod:`.engine`: the ``storage.kv.*`` requests over the store;
- :mod:`.schema`: their wire messages.

The formats' modules run compiled by mypyc when ``make`` could build them (tools/build_native.py,
docs/storage.md): decided here, before anything imports them, by :data:`NATIVE`.
"""

from pathlib import Path

from shared import native

#: Whether the entry formats (``sealing``'s ``_material``, ``v1``, ``v2``) run compiled, and if not, why.
#: Compiled only while the build record vouches for every source they were built from; otherwise
#: they are imported from their sources (shared/_native.py).
NATIVE = native.load(f"{__name__}.sealing", Path(__file__).parent / "sealing")

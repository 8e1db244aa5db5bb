"""The records engine: msgpack documents with indexed fields in one SQLCipher database.

- :mod:`.store`: :class:`~.store.RecordStore`, the database, its lock, transactions and API;
- :mod:`.sql`: the SQL side (pragmas, schema, statement text, document encoding, verification);
- :mod:`.engine`: the ``storage.records.*`` requests over the store;
- :mod:`.schema`: their wire messages.
"""

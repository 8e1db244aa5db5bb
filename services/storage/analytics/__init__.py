"""The analytics engine: tables of rows and read-only SQL, one encrypted DuckDB file per namespace.

- :mod:`.store`: :class:`~.store.AnalyticsStore`, the store's API and the order of its steps;
- :mod:`.dbfiles`: the namespace files on disk (names, making, opening, re-encrypting, checking);
- :mod:`.slots`: each file's lock and open instance;
- :mod:`.sandbox`: the confined DuckDB instances and what a caller's SQL may do in them;
- :mod:`.values`: the values crossing between callers and DuckDB;
- :mod:`.engine`: the ``storage.analytics.*`` requests over the store;
- :mod:`.schema`: their wire messages.
"""

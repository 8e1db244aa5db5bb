"""The storage service: guards encrypted stores (SQLCipher, DuckDB, RocksDB, files come with the
storage issue).
"""

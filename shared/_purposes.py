"""The purposes a data key can have: the names keyvault keeps a key for.

Apart from :mod:`._config` (which checks declarations and entitlements against them) so that a
program needing only the names, such as meshctl's parser building its ``--help``, does not import
the configuration's parser and everything it checks with.
"""

from __future__ import annotations

from typing import Final

#: Every purpose a data key can have (DESIGN.md, keyvault issue).
PURPOSES: Final = ("sqlcipher", "duckdb", "rocksdb", "files", "audit-hmac", "audit-signing",
                   "token-signing", "accounts", "authz", "pairing", "plugins", "backups")

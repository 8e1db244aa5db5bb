"""Writing private files durably: the one way curvemesh creates and replaces its own files.

- :func:`write_atomic` replaces a state file so a crash leaves the old contents or the new,
  never a mix (temporary file with an exact mode, fsync, rename, directory fsync); a
  ``checkpoint`` callback lets tests kill the process between the steps;
- :func:`write_exclusive` creates a new file with ``O_EXCL`` and an exact mode from the first
  instant (never through the umask), for secrets, tokens and credentials;
- :func:`fsync_path` makes a file, or a directory's entries, durable;
- :func:`drop_cached` drops a large file written once from the page cache.

The code is in :mod:`shared._files` and :mod:`shared._certs`.
"""

from __future__ import annotations

from ._certs import write_exclusive
from ._files import drop_cached, fsync_path, write_atomic

__all__ = ["drop_cached", "fsync_path", "write_atomic", "write_exclusive"]

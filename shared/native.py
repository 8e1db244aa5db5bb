"""Compiled twins of Python modules (mypyc), used only while they match their sources.

- :func:`load`, called by a package before it imports its modules: the compiled ones are used
  when the build record vouches for them, else every one is imported from its source
  (:class:`Native` says which, and why);
- :func:`stale`, :func:`write_record`, :func:`digest`, :func:`compiled_files` and
  :func:`extension_files`, for the build (``tools/build_native.py``, ``make native``);
- :data:`ENV`: ``CURVEMESH_NATIVE=0`` runs the sources whatever is built; :data:`ABI`: the
  suffix of this interpreter's extension files.

The code, and why a record is needed at all, is in :mod:`shared._native`.
"""

from __future__ import annotations

from ._native import ABI, ENV, RECORD, Native, compiled_files, digest, extension_files, load, stale, write_record

__all__ = [
    "ABI", "ENV", "RECORD", "Native", "compiled_files", "digest", "extension_files", "load", "stale", "write_record",
]

"""A plugin's manifest (``plugin.toml``): who it is, what it runs, what it is granted.

Parsing is strict, like mesh.toml's: an unknown key, a value of the wrong type or outside its range
is refused naming the key and what is allowed (:class:`PackageRefused`, ``bad_manifest``). The
format is described in :mod:`shared.plugins`.
"""

from __future__ import annotations

import keyword
import re
import sys
import tomllib
from dataclasses import dataclass
from typing import Any, Final

from ._plugin_grants import (
    DEFAULT_REQUIRES,
    Capability,
    PackageRefused,
    Quotas,
    parse_capability,
    parse_quotas,
    parse_requires,
    show,
)
from ._plugin_keys import check_key_id

MANIFEST_FILE: Final = "plugin.toml"
#: The largest manifest read: it is a few lines of TOML.
MANIFEST_MAX_BYTES: Final = 64 * 1024
MAX_CAPABILITIES: Final = 64
DESCRIPTION_MAX: Final = 200

NAME_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
ENTRY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# SemVer's core without pre-release or build: no leading zeros, so one version has one spelling and
# "01.2.3" cannot pass for a different release than "1.2.3". Nine digits a part keep it an int.
VERSION_RE: Final = re.compile(r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})")
_VERSION_FORM: Final = ("MAJOR.MINOR.PATCH: three whole numbers of at most 9 digits, without leading zeros or a "
                        "pre-release or build suffix, such as 1.2.0")

_KEYS: Final = ("name", "version", "publisher", "entry", "description", "capabilities", "quotas", "sandbox")
_REQUIRED: Final = ("name", "version", "publisher", "entry")


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed, checked ``plugin.toml``.

    ``name``: the plugin's name (1-32 of a-z 0-9 -, starting with a letter); ``version``:
    ``MAJOR.MINOR.PATCH`` (compare with :func:`version_key`); ``publisher``: the key id of the
    publisher key that must have signed the package; ``entry``: the Python module plugin-host imports
    from the package directory (``<entry>.py`` is in the package); ``description``: one printable
    line of at most 200 characters; ``capabilities``: the grants, deduplicated and sorted by text;
    ``quotas``: its limits; ``requires``: the sandbox layers it must run under (a superset of
    :data:`DEFAULT_REQUIRES`).
    """

    name: str
    version: str
    publisher: str
    entry: str
    description: str
    capabilities: tuple[Capability, ...]
    quotas: Quotas
    requires: frozenset[str]

    @property
    def entry_file(self) -> str:
        """The file the entry module is imported from, relative to the package directory."""
        return f"{self.entry}.py"


def version_key(version: str) -> tuple[int, int, int]:
    """``MAJOR.MINOR.PATCH`` as a tuple of ints, so ``"1.10.0"`` sorts after ``"1.9.9"``; anything
    else raises :class:`PackageRefused` (``bad_manifest``)."""
    match = VERSION_RE.fullmatch(version) if isinstance(version, str) else None
    if match is None:
        raise PackageRefused("bad_manifest", f"version {show(version)} is not {_VERSION_FORM}")
    return int(match[1]), int(match[2]), int(match[3])


def parse_manifest(text: str, *, source: str = MANIFEST_FILE) -> Manifest:
    """Parse and check manifest ``text``; every refusal is :class:`PackageRefused` (``bad_manifest``)
    with a message that starts with ``source`` and names the key."""
    if not isinstance(text, str) or len(text) > MANIFEST_MAX_BYTES:
        raise PackageRefused("bad_manifest", f"{source}: must be TOML text of at most {MANIFEST_MAX_BYTES} bytes")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PackageRefused("bad_manifest", f"{source}: not valid TOML ({exc})") from None
    except (ValueError, RecursionError):
        raise PackageRefused("bad_manifest", f"{source}: not valid TOML") from None
    try:
        return _build(data)
    except PackageRefused as exc:
        raise PackageRefused("bad_manifest", f"{source}: {exc.message}") from None


def _build(data: dict[str, Any]) -> Manifest:
    unknown = sorted(show(key) for key in data if key not in _KEYS)
    if unknown:
        raise PackageRefused("bad_manifest", f"unknown key {', '.join(unknown)}; a manifest has "
                                             f"{', '.join(_KEYS)}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise PackageRefused("bad_manifest", f"{', '.join(missing)}: missing; a manifest names at least "
                                             f"{', '.join(_REQUIRED)}")
    name = _string(data, "name")
    if not NAME_RE.fullmatch(name):
        raise PackageRefused("bad_manifest", f"name: {show(name)} is not a plugin name (1-32 of a-z 0-9 -, "
                                             "starting with a letter)")
    version = _string(data, "version")
    if not VERSION_RE.fullmatch(version):
        raise PackageRefused("bad_manifest", f"version: {show(version)} is not {_VERSION_FORM}")
    publisher = check_key_id(_string(data, "publisher"), "publisher")
    entry = _string(data, "entry")
    if not ENTRY_RE.fullmatch(entry) or keyword.iskeyword(entry):
        raise PackageRefused("bad_manifest", f"entry: {show(entry)} is not a Python module name (1-64 of A-Z a-z "
                                             "0-9 _, not starting with a digit, not a keyword)")
    if entry in sys.stdlib_module_names:
        raise PackageRefused("bad_manifest", f"entry: {entry!r} is the name of a standard library module, which "
                                             "the plugin's own file would shadow or be shadowed by; rename it")
    description = _string(data, "description") if "description" in data else ""
    if len(description) > DESCRIPTION_MAX or not description.isprintable():
        raise PackageRefused("bad_manifest", f"description: must be one line of at most {DESCRIPTION_MAX} "
                                             "printable characters")
    return Manifest(name, version, publisher, entry, description, _capabilities(data.get("capabilities", [])),
                    parse_quotas(data.get("quotas", {}), "quotas"), _sandbox(data.get("sandbox", {})))


def _string(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise PackageRefused("bad_manifest", f"{key}: must be a string, not {show(value)}")
    return value


def _capabilities(value: object) -> tuple[Capability, ...]:
    if not isinstance(value, list):
        raise PackageRefused("bad_manifest", "capabilities: must be a list of strings such as "
                                             "\"storage.kv:read:notes\"")
    if len(value) > MAX_CAPABILITIES:
        raise PackageRefused("bad_manifest", f"capabilities: at most {MAX_CAPABILITIES} grants")
    grants: dict[str, Capability] = {}
    for index, item in enumerate(value):
        try:
            grant = parse_capability(item)
        except PackageRefused as exc:
            raise PackageRefused("bad_manifest", f"capabilities[{index}]: {exc.message}") from None
        grants[grant.text] = grant
    return tuple(grants[text] for text in sorted(grants))


def _sandbox(value: object) -> frozenset[str]:
    if not isinstance(value, dict):
        raise PackageRefused("bad_manifest", "sandbox: must be a table (with requires = [...])")
    unknown = sorted(show(key) for key in value if key != "requires")
    if unknown:
        raise PackageRefused("bad_manifest", f"sandbox: unknown key {', '.join(unknown)}; [sandbox] has requires")
    if "requires" not in value:
        return DEFAULT_REQUIRES
    return parse_requires(value["requires"], "sandbox.requires")

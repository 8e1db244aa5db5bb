"""The policy directory, loaded and validated as one unit: a :class:`PolicyBundle` or a
:class:`PolicyError` naming the file and the line.

A directory holds (docs/authz.md):

- ``schema.cedarschema``: the Cedar schema every policy is validated against;
- ``categories.toml``: the data categories and their sensitivity (``low``, ``personal``,
  ``sensitive``; policies see 1, 2 and 3);
- ``*.cedar``: the policies. Each carries a unique ``@id`` (decisions name it) and may carry a
  ``@reason`` (the sentence a denial or ``meshctl policy test`` shows).

The built-in invariants (``invariants.cedar`` beside this module) are added to every set; the
directory cannot replace them. Everything is parsed once here into cedarpy's ``PolicySet``,
``Schema`` and ``Entities`` handles, so a decision parses nothing. Loading touches no state: a
reload that fails leaves the running bundle in place.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import cedarpy

from .locating import Statement, line_of, statements

SCHEMA_FILE: Final = "schema.cedarschema"
CATEGORIES_FILE: Final = "categories.toml"
INVARIANTS: Final = Path(__file__).with_name("invariants.cedar")
#: The directory shipped with authz, used when ``[authz] policy_dir`` is empty.
DEFAULT_DIR: Final = Path(__file__).with_name("policy")
SENSITIVITY: Final = {"low": 1, "personal": 2, "sensitive": 3}
CATEGORY_RE: Final = re.compile(r"[a-z][a-z0-9_-]{0,31}")
ROLE_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,31}")
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
MAX_FILE_BYTES: Final = 1 << 20


class PolicyError(Exception):
    """The directory is unusable; the message names the file (and the line when known) and says
    what to fix. It never carries policy text beyond the offending identifier."""


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """One policy: its ``@id``, effect, ``@reason``, and where it is written (file path, line)."""

    id: str
    effect: str
    reason: str
    file: str
    line: int


@dataclass(frozen=True)
class PolicyBundle:
    """A validated directory. ``policies`` maps Cedar's own ids (``policy0``...) to
    :class:`PolicyInfo`; ``digest`` identifies the loaded text (shown by ``policy show``)."""

    directory: Path
    policy_set: Any
    schema: Any
    categories: dict[str, int]
    policies: dict[str, PolicyInfo]
    digest: str

    def entities(self, principals: dict[tuple[str, str], tuple[str, ...]]) -> Any:
        """cedarpy ``Entities``: the roles, the categories and each principal with its roles."""
        roles = sorted({role for held in principals.values() for role in held} | {"system", "user-data", "plugin"})
        items: list[dict[str, Any]] = [{"uid": {"type": "Role", "id": r}, "attrs": {}, "parents": []} for r in roles]
        items += [{"uid": {"type": "Category", "id": name}, "attrs": {"sensitivity": level}, "parents": []}
                  for name, level in sorted(self.categories.items())]
        items += [{"uid": {"type": kind, "id": name}, "attrs": {},
                   "parents": [{"type": "Role", "id": r} for r in held]}
                  for (kind, name), held in sorted(principals.items())]
        return cedarpy.Entities.from_json_str(json.dumps(items), self.schema)


def load(directory: Path) -> PolicyBundle:
    """Load and validate ``directory``; :class:`PolicyError` on the first problem."""
    if not directory.is_dir():
        raise PolicyError(f"{directory}: not a directory; set [authz] policy_dir to a policy directory "
                          f"(the shipped one is {DEFAULT_DIR})")
    hasher = hashlib.sha256()
    schema_path = directory / SCHEMA_FILE
    schema_text = _read(schema_path, hasher)
    schema = _schema(schema_path, schema_text)
    categories = _categories(directory / CATEGORIES_FILE, _read(directory / CATEGORIES_FILE, hasher))
    files = sorted(p for p in directory.iterdir() if p.suffix == ".cedar")
    if not files:
        raise PolicyError(f"{directory}: no *.cedar policy file; nothing would ever be allowed")
    sources = [(p, _read(p, hasher)) for p in files] + [(INVARIANTS, INVARIANTS.read_text("utf-8"))]
    policy_set, infos = _policies(sources, schema)
    return PolicyBundle(directory, policy_set, schema, categories, infos, hasher.hexdigest()[:16])


def _read(path: Path, hasher: Any) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"{path}: missing; a policy directory holds {SCHEMA_FILE}, {CATEGORIES_FILE} "
                          "and *.cedar files") from None
    except OSError as exc:
        raise PolicyError(f"{path}: unreadable ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise PolicyError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    hasher.update(path.name.encode() + b"\0" + data + b"\0")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None


def _schema(path: Path, text: str) -> Any:
    try:
        return cedarpy.Schema.from_str(text)
    except ValueError as exc:
        message = str(exc).removeprefix("error parsing schema: ")
        raise PolicyError(f"{path}:{_schema_line(text, message)}: {message}") from None


def _schema_line(text: str, message: str) -> int:
    """The line a schema error is on: the first statement that does not parse alone, else the first
    line naming the token the message quotes, else 1."""
    for statement in statements(text):
        try:
            cedarpy.Schema.from_str(statement.text)
        except ValueError as exc:
            if "unexpected" in str(exc) or "expected" in str(exc):
                return statement.line
    token = re.search(r"`([^`]+)`", message)
    return (line_of(text, token.group(1)) if token else None) or 1


def _categories(path: Path, text: str) -> dict[str, int]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    unknown = sorted(set(document) - {"categories"})
    if unknown:
        raise PolicyError(f"{path}:{line_of(text, unknown[0]) or 1}: unknown key {unknown[0]!r}; the file holds "
                          "[categories.<name>] tables only")
    tables = document.get("categories")
    if not isinstance(tables, dict) or not tables:
        raise PolicyError(f"{path}: no [categories.<name>] table; declare at least one category")
    found: dict[str, int] = {}
    for name, table in tables.items():
        at = line_of(text, f"[categories.{name}]") or 1
        if not CATEGORY_RE.fullmatch(name):
            raise PolicyError(f"{path}:{at}: category {name!r}: 1-32 characters of a-z, 0-9, _ and -, "
                              "starting with a letter")
        if not isinstance(table, dict):
            raise PolicyError(f"{path}:{at}: categories.{name} must be a table")
        extra = sorted(set(table) - {"sensitivity"})
        if extra:
            line = _key_line(text, at, extra[0])
            raise PolicyError(f"{path}:{line}: categories.{name}: unknown key {extra[0]!r}; a category has "
                              "only sensitivity")
        level = table.get("sensitivity")
        if level not in SENSITIVITY:
            line = _key_line(text, at, "sensitivity")
            raise PolicyError(f"{path}:{line}: categories.{name}.sensitivity: one of {', '.join(SENSITIVITY)}")
        found[name] = SENSITIVITY[str(level)]
    return found


def _key_line(text: str, table_line: int, key: str) -> int:
    """The line of ``key =`` in the table that starts at ``table_line``."""
    pattern = re.compile(rf"\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines()[table_line:], table_line + 1):
        if line.lstrip().startswith("["):
            break
        if pattern.match(line):
            return number
    return table_line


def _policies(sources: list[tuple[Path, str]], schema: Any) -> tuple[Any, dict[str, PolicyInfo]]:
    """Parse every statement alone (to name its line), then the whole set once, then validate it."""
    located: list[tuple[Path, Statement]] = []
    for path, text in sources:
        for statement in statements(text):
            try:
                cedarpy.PolicySet.from_str(statement.text)
            except ValueError as exc:
                raise PolicyError(f"{path}:{statement.line}: {exc}") from None
            located.append((path, statement))
    policy_set = cedarpy.PolicySet.from_str("\n".join(s.text for _, s in located))
    parsed = policy_set.to_pst()
    if parsed.templates:
        raise PolicyError(f"{located[0][0].parent}: templates (?principal, ?resource) are not used; write "
                          "static policies")
    infos: dict[str, PolicyInfo] = {}
    seen: dict[str, str] = {}
    for index, (path, statement) in enumerate(located):
        policy = parsed.static_policies[f"policy{index}"]
        where = f"{path}:{statement.line}"
        ident = policy.annotations.get("id")
        if not ident or not _ID_RE.fullmatch(ident):
            raise PolicyError(f"{where}: every policy needs @id(\"name\") (1-64 letters, digits, . _ : -)")
        if ident in seen:
            raise PolicyError(f"{where}: @id({ident!r}) is already used at {seen[ident]}")
        seen[ident] = where
        infos[f"policy{index}"] = PolicyInfo(ident, policy.effect, policy.annotations.get("reason", ""),
                                             str(path), statement.line)
    result = cedarpy.validate_policies("\n".join(s.text for _, s in located), schema)
    if not result.validation_passed:
        error = result.errors[0]
        info = infos.get(error.policy_id)
        where = f"{info.file}:{info.line}" if info else str(located[0][0].parent)
        # Cedar names the policy by its position ("policy5"); operators know it by its @id.
        message = re.sub(r"^for policy `[^`]*`, ", "", error.error)
        label = f"@id({info.id!r}): " if info else ""
        raise PolicyError(f"{where}: {label}{message} (validated against {SCHEMA_FILE})")
    return policy_set, infos

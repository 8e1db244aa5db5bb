"""Message types: frozen dataclasses checked strictly at the wire boundary.

Decorate a class with :func:`message` and declare its fields with type hints.
:meth:`from_wire` accepts only a map with exactly those fields (defaults may
be omitted), each of the declared type, and raises
:class:`~shared.BadRequest` naming the field otherwise. Supported types:
``str``, ``int``, ``float``, ``bool``, ``bytes``, ``Any`` (any msgpack
value), ``list[T]``, ``dict[str, T]``, ``T | None`` and nested messages.
Length limits go in field metadata: ``field(metadata={"max_len": 64})``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar, Union

from ._errors import BadRequest

_DEFAULT_MAX_LEN = 65536
T = TypeVar("T")


class Message(Protocol):
    """What :func:`message` adds to a class."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @classmethod
    def from_wire(cls: type[T], value: Any) -> T: ...

    def to_wire(self) -> dict[str, Any]: ...


def _check(tp: Any, value: Any, where: str, max_len: int) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], value, where, max_len)
    if origin is list:
        if type(value) is not list or len(value) > max_len:
            raise BadRequest(f"field {where!r} must be a list of at most {max_len} items")
        (item,) = typing.get_args(tp)
        return [_check(item, v, f"{where}[{i}]", _DEFAULT_MAX_LEN) for i, v in enumerate(value)]
    if origin is dict:
        if type(value) is not dict or len(value) > max_len:
            raise BadRequest(f"field {where!r} must be a map of at most {max_len} entries")
        _, item = typing.get_args(tp)
        return {k: _check(item, v, f"{where}.{k}", _DEFAULT_MAX_LEN) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and hasattr(tp, "from_wire"):
        return tp.from_wire(value)
    if tp is float and type(value) is int:
        return float(value)
    if type(value) is not tp:
        raise BadRequest(f"field {where!r} must be of type {tp.__name__}")
    if tp in (str, bytes) and len(value) > max_len:
        raise BadRequest(f"field {where!r} is longer than {max_len}")
    return value


def _field_check(tp: Any, name: str, max_len: int) -> Callable[[Any], Any]:
    """:func:`_check` for one field, made once with its message type: a plain ``str``, ``bytes``,
    ``int`` or ``bool`` field (most fields of most requests) gets the very same checks without
    the type dispatch on every call; every other type goes through :func:`_check`."""
    if tp is str or tp is bytes:
        def sized(value: Any) -> Any:
            if type(value) is not tp:
                raise BadRequest(f"field {name!r} must be of type {tp.__name__}")
            if len(value) > max_len:
                raise BadRequest(f"field {name!r} is longer than {max_len}")
            return value
        return sized
    if tp is int or tp is bool:
        def plain(value: Any) -> Any:
            if type(value) is not tp:
                raise BadRequest(f"field {name!r} must be of type {tp.__name__}")
            return value
        return plain
    return lambda value: _check(tp, value, name, max_len)


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def message(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, keyword-only dataclass with ``from_wire`` and ``to_wire``."""
    data_cls = dataclasses.dataclass(frozen=True, kw_only=True)(cls)
    hints = typing.get_type_hints(data_cls)
    specs = {f.name: f for f in dataclasses.fields(data_cls)}  # type: ignore[arg-type]
    required = {n for n, f in specs.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    checks = {n: _field_check(hints[n], n, f.metadata.get("max_len", _DEFAULT_MAX_LEN)) for n, f in specs.items()}
    allowed = specs.keys()

    def from_wire(klass: type[T], value: Any) -> T:
        if value is None and not required:
            value = {}
        if type(value) is not dict:
            raise BadRequest(f"{klass.__name__}: body must be a map")
        if not value.keys() <= allowed:
            unknown = sum(1 for k in value if k not in specs)
            # Name the fields we accept, never the ones sent: an unknown key may carry anything.
            raise BadRequest(f"{klass.__name__}: {unknown} unknown field(s); "
                             f"allowed: {', '.join(sorted(specs)) or 'none'}")
        if not required <= value.keys():
            missing = sorted(required - value.keys())
            raise BadRequest(f"{klass.__name__}: missing field(s) {', '.join(missing)}")
        # Every key is a declared field here: the table of checks is indexed by declared names only.
        return klass(**{name: checks[name](item) for name, item in value.items()})

    def to_wire(self: Any) -> dict[str, Any]:
        result: dict[str, Any] = _to_wire(self)
        return result

    data_cls.from_wire = classmethod(from_wire)  # type: ignore[attr-defined]
    data_cls.to_wire = to_wire  # type: ignore[attr-defined]
    return data_cls


def sensitive_fields(cls: type[Any]) -> frozenset[str]:
    """Fields declared ``field(metadata={"sensitive": True})``: redacted from every log."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("sensitive"))

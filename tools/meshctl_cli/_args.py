"""meshctl's rules for its own command line, checked while it is parsed.

Two kinds of rule live here, so every command group gets them by declaring, not by coding:

- Numbers: :func:`seconds`, :func:`count` and :func:`int_range` are argparse ``type=`` functions.
  A timeout of zero, a negative count or ``nan`` is a usage error (exit 2, one line) before
  anything runs, instead of a wait that ends at once, never ends, or fails deep inside a library.
- Applicability: :func:`only` gives a command a table of which options apply to which of its
  actions (``certs list`` takes ``--state``, ``certs accept`` takes ``--name``). After parsing,
  :func:`inapplicable` compares each option in the table with its default; an option given to an
  action it does not apply to is refused, naming both, because an ignored option is an operator
  who believes something happened that did not.
"""

from __future__ import annotations

import argparse
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Final

#: The longest wait any meshctl option accepts (one day). Waits are bounded so a typo such as
#: ``--timeout 1e300`` is a usage error instead of an overflow inside the event loop or select().
MAX_SECONDS: Final = 86400.0

# Which options apply to which actions, per parser: dest -> (name shown to the operator, actions).
_TABLES: weakref.WeakKeyDictionary[argparse.ArgumentParser, dict[str, tuple[str, tuple[str, ...]]]] = (
    weakref.WeakKeyDictionary())


def seconds(text: str) -> float:
    """A duration in seconds: a finite number above 0, at most :data:`MAX_SECONDS`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (e.g. 30 or 2.5)") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0 (e.g. 30 or 2.5)")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than a day ({MAX_SECONDS:g} seconds)")
    return value


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (no upper bound if None)."""
    span = f"from {low} to {high}" if high is not None else f"of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number {span}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number {span}")
        return value

    parse.__name__ = f"int_range({low}, {high})"  # argparse names the type in some messages
    return parse


#: How many of something (events, lines): 1 or more.
count: Final = int_range(1)
#: A number that may be 0 but never negative (``logs -n 0``: only new lines; a priority; an id).
non_negative: Final = int_range(0)


def only(parser: argparse.ArgumentParser, table: Mapping[str, Sequence[str]]) -> None:
    """Declare which of ``parser``'s options (by dest) apply to which values of its ``action``.

    Options missing from the table apply to every action. A dest that ``parser`` does not have,
    or an action it does not offer, is a programming error and fails at once (the tests build
    the parser), so a table cannot silently drift from the arguments it describes.
    """
    actions = {a.dest: a for a in parser._actions}  # argparse keeps no public list of its arguments
    offered = actions["action"].choices if "action" in actions else None
    rules: dict[str, tuple[str, tuple[str, ...]]] = {}
    for dest, applies in table.items():
        argument = actions[dest]  # KeyError: the table names an argument the parser does not have
        if offered is not None and not set(applies) <= set(offered):
            raise ValueError(f"{parser.prog}: {dest} applies to unknown actions {sorted(set(applies) - set(offered))}")
        shown = max(argument.option_strings, key=len) if argument.option_strings else (
            str(argument.metavar or dest.upper()))
        rules[dest] = (shown, tuple(applies))
    _TABLES[parser] = rules


def inapplicable(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> str | None:
    """One line naming the first option given to an action it does not apply to, or None."""
    action = getattr(namespace, "action", None)
    command = parser.prog.split(" ", 1)[-1]  # "meshctl certs" -> "certs": the error line starts "meshctl: "
    for dest, (shown, applies) in _TABLES.get(parser, {}).items():
        if action in applies or getattr(namespace, dest, None) == parser.get_default(dest):
            continue
        targets = ", ".join(f"{command} {a}" for a in applies)
        return f"{shown} does not apply to {command} {action} (only to {targets}): leave it out"
    return None

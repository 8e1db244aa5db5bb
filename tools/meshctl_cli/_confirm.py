"""Asking before a destructive command acts: ``init --force``, ``certs revoke``, ``security lock``,
``down``, ``keys rotate``, ``backup restore``, ``service remove`` (and what later command groups add).

The rules, the same for every such command:

- ``--yes`` (``-y``) goes ahead without asking: for scripts, and for people who already decided.
- On a terminal (stdin is a tty) the question names exactly what will happen, with any warning
  above it, on stderr (stdout stays the result's, so ``--json`` output is never mixed with it).
  Only ``y`` or ``yes`` goes ahead; anything else, an empty line and end of input included,
  aborts with exit 1 and ``aborted: nothing changed``.
- Without a terminal and without ``--yes`` the command refuses at once, exit 2 (a usage error),
  before it reads or changes anything: a pipe or a cron job must say ``--yes`` explicitly, so
  ``yes | meshctl down`` or an empty stdin can never answer for a person.

The answer is read from stdin only when stdin is a terminal; a pipe is never read as an answer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from ._output import CliError

ABORTED = "aborted: nothing changed"
_YES = frozenset({"y", "yes"})


def _command(args: argparse.Namespace) -> str:
    action = getattr(args, "action", None)
    return args.command + (f" {action}" if action else "")


def on_terminal() -> bool:
    """True when a person can be asked: stdin is a terminal."""
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin was closed
        return False


def require(args: argparse.Namespace) -> None:
    """Refuse now, exit 2, unless ``--yes`` was given or a person can be asked later.

    Commands call this before they connect or read anything, so a refusal changes nothing and
    does not depend on the state of the mesh."""
    if not getattr(args, "yes", False) and not on_terminal():
        raise CliError(f"{_command(args)} asks before it acts, and there is no terminal to ask: add --yes to go "
                       "ahead", status=2)


def confirm(args: argparse.Namespace, question: str, warnings: Iterable[str] = ()) -> None:
    """Return if the operator agreed to ``question`` (or gave ``--yes``); else raise :class:`CliError`.

    ``question`` says what will happen, without the ``[y/N]``; each warning is printed on its own
    line above it (``storage will stop: ...``)."""
    if getattr(args, "yes", False):
        return
    require(args)
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(f"{question}? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise CliError(ABORTED, status=130) from None
    if not answer.endswith("\n"):
        print(file=sys.stderr)  # end of input: end the prompt's line before the error line
    if answer.strip().lower() not in _YES:
        raise CliError(ABORTED)

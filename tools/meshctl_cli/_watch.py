"""``meshctl status --watch`` and ``meshctl alerts --watch``: the same view, refreshed every
``--interval`` seconds until Ctrl-C, which ends it with exit status 0 (the operator chose to stop).

On a terminal the view is redrawn in place (rich's ``Live``); on a pipe each refresh is printed
after the last, separated by a blank line, and with ``--json`` each is one JSON document a line,
so a script can read the stream line by line. A refresh that fails (the mesh went down under an
``alerts --watch``) shows its one-line reason in place of the view, and the next refresh tries
again: a watch outlives the outage it is watching.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ._output import CliError

# asyncio is imported where a watch starts, not here: `status` and `alerts` without --watch check
# the flags with this module and run no event loop (issue 13: start-up is a command's main cost).

#: One refresh: the JSON-ready value and its text for people.
Fetch = Callable[[], Awaitable[tuple[Any, str]]]
Show = Callable[[Any, str], None]


def check_flags(args: argparse.Namespace, applies: bool) -> float | None:
    """The refresh interval when ``--watch`` is given (None without it); a usage error for a
    non-positive interval, or for ``--watch``/``--interval`` where they do not apply."""
    watching, interval = bool(getattr(args, "watch", False)), getattr(args, "interval", None)
    if (watching or interval is not None) and not applies:
        raise CliError("--watch and --interval apply to `status` and `alerts` (list) only", status=2)
    if interval is not None and not watching:
        raise CliError("--interval needs --watch", status=2)
    if not watching:
        return None
    seconds = 2.0 if interval is None else float(interval)
    if not math.isfinite(seconds) or seconds <= 0:
        raise CliError("--interval must be a positive number of seconds", status=2)
    return seconds


async def _loop(fetch: Fetch, interval: float, show: Show, close: Callable[[], Awaitable[None]] | None) -> None:
    import asyncio

    try:
        while True:
            try:
                value, text = await fetch()
            except CliError as exc:
                value = {"error": {"code": exc.kind, "message": exc.message, "exit_code": exc.status}}
                text = f"meshctl: {exc.message}"
            show(value, text)
            await asyncio.sleep(interval)  # the refresh interval the operator asked for
    finally:
        if close is not None:
            await close()


def watch(fetch: Fetch, interval: float, as_json: bool, title: str,
          close: Callable[[], Awaitable[None]] | None = None) -> int:
    """Show ``fetch()`` every ``interval`` seconds until Ctrl-C; return 0 then."""
    import asyncio

    def heading() -> str:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        return f"{title} at {stamp}, every {interval:g} s (Ctrl-C ends)"

    try:
        if as_json or not sys.stdout.isatty():
            def show(value: Any, text: str) -> None:
                if as_json:
                    print(json.dumps(value, sort_keys=True, default=str), flush=True)
                else:
                    print(f"{heading()}\n{text}\n", flush=True)

            asyncio.run(_loop(fetch, interval, show, close))
        else:
            _live(fetch, interval, close, heading)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: not a failure.
    return 0


def _live(fetch: Fetch, interval: float, close: Callable[[], Awaitable[None]] | None,
          heading: Callable[[], str]) -> None:
    # rich only here, on a terminal: a watch on a pipe and every other command never import it.
    import asyncio

    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console(highlight=False, markup=False, emoji=False)
    with Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
        def show(_value: Any, text: str) -> None:
            # The text is already coloured (or not: NO_COLOR) by the renderers; keep their codes.
            # Wrapped table rows are unreadable: a line wider than the terminal ends in "…" instead.
            frame = Text.from_ansi(f"{heading()}\n\n{text}", no_wrap=True, overflow="ellipsis")
            live.update(frame, refresh=True)

        asyncio.run(_loop(fetch, interval, show, close))

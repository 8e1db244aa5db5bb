"""``python -m bench.guard <module> [args...]``: run a module, and stop it if the bench dies.

The full broker does not watch its parent (it is meant to run under
supervisord). The bench starts it through this guard: a daemon thread checks
twice a second whether the process that started us is still there and, once
it is gone, sends us SIGTERM so the module shuts down the way it normally does.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading

from .wire import IDLE_POLL_MS


def _watch(parent: int, done: threading.Event) -> None:
    while not done.wait(IDLE_POLL_MS / 1000):
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main() -> None:
    """Start the watcher, then run ``sys.argv[1]`` as ``__main__`` with the remaining arguments."""
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m bench.guard <module> [args...]")
    done = threading.Event()
    threading.Thread(target=_watch, args=(os.getppid(), done), name="bench-guard", daemon=True).start()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        done.set()


if __name__ == "__main__":
    main()

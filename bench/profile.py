"""Summaries of a cProfile output file: where a broker process spent its time.

The bench's ``--profile`` mode runs the full broker, the minimal forwarder and
the runtime echo service under ``python -m cProfile`` (and profiles its own
runtime calls) and prints, for each, the functions with the most own time and
the mesh's own functions (broker, runtime, codec) with their cumulative time
per call, so the hot paths can be compared function by function.
"""

from __future__ import annotations

import io
import pstats
from pathlib import Path

#: Source files whose functions are always listed (the broker's and the runtime's hot paths, the codec).
FOCUS = ("services/broker/", "shared/_codec.py", "shared/_ratelimit.py", "bench/forwarder.py",
         "shared/_runtime.py", "shared/_connection.py", "shared/_client.py", "shared/_schema.py",
         "bench/rtservice.py")


def _short(filename: str) -> str:
    """A repository-relative path for the project's files, the base name for the rest."""
    for top in ("services/", "shared/", "bench/"):
        index = filename.rfind("/" + top)
        if index >= 0:
            return filename[index + 1:]
    return filename.rsplit("/", 1)[-1]


def summary(path: Path, top: int = 25) -> str:
    """The ``top`` functions by own time, then every focus function by cumulative time."""
    if not path.is_file():
        return f"(no profile at {path}: did the process exit cleanly?)"
    stats = pstats.Stats(str(path), stream=io.StringIO())
    rows = []
    total = 0.0
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, lineno, func), (_cc, ncalls, tottime, cumtime, _callers) in raw.items():
        total += tottime
        rows.append((tottime, cumtime, ncalls, f"{_short(filename)}:{lineno}({func})", filename))
    if total <= 0:
        return "(empty profile)"
    out = [f"{'own s':>8} {'own %':>6} {'cum s':>8} {'calls':>9} {'own us/call':>12}  function"]

    def line(row: tuple[float, float, int, str, str]) -> str:
        tottime, cumtime, ncalls, name, _ = row
        per = tottime / ncalls * 1e6 if ncalls else 0.0
        return f"{tottime:8.3f} {100 * tottime / total:6.1f} {cumtime:8.3f} {ncalls:9d} {per:12.2f}  {name}"

    rows.sort(key=lambda r: r[0], reverse=True)
    out += [line(r) for r in rows[:top]]
    focus = [r for r in rows if any(part in r[4] for part in FOCUS)]
    focus.sort(key=lambda r: r[1], reverse=True)
    out.append("")
    out.append("mesh functions (broker, runtime, codec, forwarder), by cumulative time:")
    out += [line(r) for r in focus[:top]]
    out.append(f"total own time {total:.3f} s")
    return "\n".join(out)


def print_profile(name: str, path: Path) -> None:
    """Print :func:`summary` for one process under a heading."""
    print(f"\n=== cProfile: {name} ===")
    print(summary(path))

"""The audit section of ``make bench`` (issue 18): audit start-to-ready time as the log grows.

For each size a log is built in process, fast (records chained and checkpointed as the service
writes them, a checkpoint per 100 records, bulk-appended through :class:`AuditStore`; not one mesh
call per record), with its trusted checkpoint in a file slot and the verified anchor a clean stop
saves. Then, alternating, in rounds:

- **start** (now): what :meth:`services.audit.seal.SealMixin._verify_start` runs at unseal: open the
  SQLCipher database, check every page's HMAC when the file is at most the default
  ``[audit] start_page_check_mib`` (256 MiB: every size here), :func:`services.audit.anchor.resume`
  (the anchor checked against its signed checkpoint, the records after it, the consistency with the
  trusted checkpoint), the open alerts adopted;
- **full verify** (before): open the database and :func:`services.audit.scan.verify_head` over the
  whole log with the alert replay, which is what every start did before anchors and what the
  background pass does now.

The target is the start at the largest size: at most :data:`START_TARGET_S` seconds. The start's
slope is the page check (linear in the file, in C: about 4 ms per MB, 0.7 s at 1M records, 170 MB;
above 256 MiB it moves to the background pass, so the start stops growing there), the records after
the anchor (none here: the anchor is at the end, as after a clean stop) and the anchor itself (one
witness-tree root per 64 records: 0.5 MB at 1M records); the full verification is linear in the log.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from services.audit.alert_engine import AlertEngine
from services.audit.anchor import Anchor, encode_anchor, resume
from services.audit.chain import LogEntry, LogHead, encode_record, public_key_of
from services.audit.merkle import leaf_hash
from services.audit.proofs import encode_checkpoint
from services.audit.scan import scan
from services.audit.store import AuditStore
from services.audit.witness_tree import WitnessTree
from shared import AuditConfig
from shared.keystore import FileKeystore

GROUP: Final = "audit"
START_TARGET_S: Final = 2.0
#: The service's default: a start checks every page's HMAC up to this size (``[audit] start_page_check_mib``).
PAGE_CHECK_BYTES: Final = AuditConfig().start_page_check_mib << 20
EVERY: Final = 100
DB_KEY: Final = bytes(range(32))
SIGN_KEY: Final = bytes(range(32, 64))
T0: Final = 1_700_000_000.0


@dataclasses.dataclass(frozen=True)
class AuditOptions:
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    rounds: int = 3

    @classmethod
    def quick(cls) -> AuditOptions:
        return cls(sizes=(2_000, 10_000), rounds=2)


def build(root: Path, n: int) -> tuple[Path, FileKeystore, float]:
    """A log of ``n`` records as the service writes it, its trusted checkpoint and saved anchor.
    Returns the database, the slot and the build's seconds."""
    began = time.perf_counter()
    root.mkdir(parents=True)
    head, tree, path = LogHead(), WitnessTree(), root / "audit.db"
    latest = None
    with AuditStore.open(path, DB_KEY) as store:
        batch: list[LogEntry] = []
        for i in range(n):
            entry = head.append(time=T0 + i, actor="storage", event="storage.kv.put", outcome="ok",
                                target=f"ns/k{i}", details={"bytes": 100 + i % 50})
            tree.append(leaf_hash(encode_record(entry.record)))
            batch.append(entry)
            if len(batch) == EVERY or i == n - 1:
                latest = head.checkpoint(SIGN_KEY, T0 + i + 0.5)
                store.append(batch, latest)
                batch = []
        assert latest is not None
        blocks, tail = tree.state()
        store.put_anchor(n, encode_anchor(Anchor(latest, head.frontier.nodes, tree.floor, blocks, tuple(tail), [])))
    slot = FileKeystore(root / "trusted")
    slot.put(bytearray(encode_checkpoint(latest)))
    return path, slot, time.perf_counter() - began


def _start(path: Path, slot: FileKeystore, engine: AlertEngine) -> int:
    with AuditStore.open(path, DB_KEY) as store:
        if store.file_bytes() <= PAGE_CHECK_BYTES:  # as the service's start does by default
            store.check_pages()
        resumed = resume(store, public_key_of(SIGN_KEY), slot, engine.rules)
        engine.adopt(resumed.replay)
        return resumed.report.records_read


def _full(path: Path, slot: FileKeystore, engine: AlertEngine) -> int:
    with AuditStore.open(path, DB_KEY) as store, scan(store, public_key_of(SIGN_KEY), slot) as verified:
        engine.rebuild(verified.records())
        return verified.finish().size


def measure(options: AuditOptions) -> dict[str, Any]:
    """Per size: start and full-verify seconds per round, records the start read, build seconds."""
    out: dict[str, Any] = {"options": {"sizes": list(options.sizes), "rounds": options.rounds}, "sizes": {}}
    base = Path(tempfile.mkdtemp(prefix="cm-bench-audit-"))
    engine = AlertEngine(AuditConfig())
    try:
        for n in options.sizes:
            path, slot, built = build(base / str(n), n)
            starts, fulls, read = [], [], 0
            for _ in range(options.rounds):
                began = time.perf_counter()
                read = _start(path, slot, engine)
                starts.append(time.perf_counter() - began)
                began = time.perf_counter()
                assert _full(path, slot, engine) == n
                fulls.append(time.perf_counter() - began)
            out["sizes"][n] = {"start_s": starts, "full_s": fulls, "records_read": read, "build_s": built}
            print(f"audit {n} records: start {statistics.median(starts):.3f} s (read {read}), "
                  f"full verify {statistics.median(fulls):.3f} s, built in {built:.1f} s", flush=True)
            shutil.rmtree(base / str(n))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out


def figures(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    figs: dict[str, dict[str, Any]] = {}
    sizes = sorted(raw["sizes"])
    for n in sizes:
        m = raw["sizes"][n]
        start, full = statistics.median(m["start_s"]), statistics.median(m["full_s"])
        last = n == sizes[-1]
        figs[f"audit_start_{n}_s"] = {
            "label": f"audit start, {n:,} records", "unit": "s", "group": GROUP, "value": round(start, 4),
            "baseline": round(full, 3), "ratio": round(start / full, 4) if full else None,
            "target": {"bound": "max_abs", "value": START_TARGET_S} if last else None,
            "met": (start <= START_TARGET_S) if last else None, "informational": not last,
            "runs": [round(v, 4) for v in m["start_s"]], "records_read": m["records_read"],
            "detail": f"before (whole log verified at start): {full:.3f} s; the start read {m['records_read']} "
                      f"records; log built in {m['build_s']:.1f} s"}
    return figs


def table(figs: dict[str, dict[str, Any]]) -> str:
    head = f"{'audit start-to-ready':<32}{'start s':>10}{'before s':>10}{'ratio':>9}  {'target':<10}{'met':<4}"
    lines = [head, "-" * len(head)]
    for fig in figs.values():
        target = "-" if fig["target"] is None else f"<={fig['target']['value']:g} s"
        met = "" if fig["met"] is None else ("yes" if fig["met"] else "NO")
        lines.append(f"{fig['label']:<32}{fig['value']:>10.4f}{fig['baseline']:>10.3f}{fig['ratio']:>8.4f}x"
                     f"  {target:<10}{met:<4}")
    lines.append("before: the whole log verified at every start (now the background pass); "
                 "start: pages (up to 256 MiB) + anchor + suffix")
    return "\n".join(lines)


def main() -> None:  # pragma: no cover - python -m bench.audit
    print(table(figures(measure(AuditOptions()))))


if __name__ == "__main__":  # pragma: no cover
    main()

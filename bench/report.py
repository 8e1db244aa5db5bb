"""Turning per-round samples into figures, a table and ``bench/results/latest.json``.

Each figure's value is the median across rounds; ratios are full broker over
baseline (round trips: lower is better; throughput: higher is better). The
paired ratio (the median of the per-round ratios, each from the same few
seconds) is kept too: it is the steadier number when other work shares the
machine. The keyvault figures (bench/keyvault.py) have no baseline and no target: they
are printed in a section of their own and marked informational in the JSON. The storage
figures (bench/storage.py, bench/storage_mesh.py) have a section of their own too: each
in-process engine figure is the encrypted twin's median rate beside its plaintext twin's, with
the paired ratio (the target, where the storage issue sets one, is on it: the twins run side by
side within each round) and the ratio of the medians; the mesh, backup and restore figures are
informational. The meshctl start-up (bench/startup.py), authn (bench/authn.py), authz
(bench/authz.py), pairing (bench/pairing.py) and plugins (bench/plugins.py) figures are built and
tabled by their own modules; this one prints their sections after the others.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any, Final

import msgpack
import zmq

from . import audit, authn, authz, pairing, plugins, startup
from .harness import REPO
from .measure import percentile

RESULTS: Final = REPO / "bench" / "results"
SETUPS: Final = ("direct", "forwarder", "broker")

#: figure -> (label, unit, {ratio name: (baseline, "max" | "min", bound)})
FIGURES: Final[dict[str, tuple[str, str, dict[str, tuple[str, str, float]]]]] = {
    "rtt_p50_us": ("round trip p50", "us", {"vs_forwarder": ("forwarder", "max", 1.15),
                                            "vs_direct": ("direct", "max", 2.6)}),
    "rtt_p99_us": ("round trip p99", "us", {}),
    "throughput_msg_s": ("throughput, 64 in flight", "msg/s", {"vs_forwarder": ("forwarder", "min", 0.85)}),
    # CPU the server process spent per call during the throughput run, all its threads
    # (direct: the echo server itself). Steadier than timings on a busy machine.
    "server_cpu_us": ("server CPU per call", "us", {}),
}
#: The real Python runtime end to end (MeshClient -> full broker -> ServiceRunner handler and back).
RUNTIME_FIGURES: Final = {"runtime_rtt_p50_us": "runtime round trip p50",
                          "runtime_rtt_p99_us": "runtime round trip p99"}
#: Issue 18: the runtime's p50 at most this many times the raw full-broker p50 of the same run
#: (the Python a service call pays on top of the broker hop). The p99 stays informational.
RUNTIME_TARGETS: Final = {"runtime_rtt_p50_us": 1.3}
#: The broker growth curve (issue 18): rounds[PEER_CURVE][<count label>] = p50 (us) per run.
PEER_CURVE: Final = "broker_peers_p50_us"
#: Its figures' group: informational, printed in their own section.
CURVE_GROUP: Final = "broker_curve"
#: Figures of this group (bench/keyvault.py) are informational, printed in their own section.
KEYVAULT_GROUP: Final = "keyvault"
#: Figures of this group (bench/storage.py, bench/storage_mesh.py) have a section of their own too.
STORAGE_GROUP: Final = "storage"

Rounds = dict[str, dict[str, list[float]]]  # figure -> setup -> one value per round


def _ratio(value: float, baseline: float) -> float:
    return round(value / baseline, 3) if baseline else float("nan")


def figures(rounds: Rounds) -> dict[str, dict[str, Any]]:
    """Build every figure (value, baselines, ratios, target, met) from the per-round values."""
    out: dict[str, dict[str, Any]] = {}
    for key, (label, unit, targets) in FIGURES.items():
        per = rounds[key]
        if not all(per[s] for s in SETUPS):
            continue  # not measurable here (no /proc)
        med = {s: statistics.median(per[s]) for s in SETUPS}
        ratios: dict[str, float] = {}
        paired: dict[str, float] = {}
        for base in ("direct", "forwarder"):
            ratios[f"vs_{base}"] = _ratio(med["broker"], med[base])
            paired[f"vs_{base}"] = round(statistics.median(
                b / x for b, x in zip(per["broker"], per[base], strict=True)), 3)
        target = {name: {"baseline": base, "bound": kind, "ratio": bound}
                  for name, (base, kind, bound) in targets.items()}
        met = None
        if targets:
            met = all(ratios[name] <= bound if kind == "max" else ratios[name] >= bound
                      for name, (_, kind, bound) in targets.items())
        out[key] = {"label": label, "unit": unit, "value": round(med["broker"], 1),
                    "baselines": {s: round(med[s], 1) for s in ("direct", "forwarder")},
                    "ratios": ratios, "paired_ratios": paired, "target": target or None, "met": met,
                    "rounds": {s: [round(v, 1) for v in per[s]] for s in SETUPS}}
    for key, label in RUNTIME_FIGURES.items():
        values = rounds[key]["runtime"]
        value = statistics.median(values)
        base_key = key.replace("runtime_", "")
        bases = {s: out[base_key]["baselines"][s] for s in ("direct", "forwarder")}
        bases["broker"] = out[base_key]["value"]
        ratios = {f"vs_{s}": _ratio(value, v) for s, v in bases.items()}
        paired = {"vs_broker": round(statistics.median(
            r / b for r, b in zip(values, rounds[base_key]["broker"], strict=True)), 3)}
        fig: dict[str, Any] = {"label": label, "unit": "us", "value": round(value, 1), "baselines": bases,
                               "ratios": ratios, "paired_ratios": paired,
                               "rounds": {"runtime": [round(v, 1) for v in values]}}
        bound = RUNTIME_TARGETS.get(key)
        if bound is None:
            fig.update(target=None, met=None, informational=True,
                       note="MeshClient.call -> full broker -> ServiceRunner handler; not a target")
        else:
            fig.update(target={"vs_broker": {"baseline": "broker", "bound": "max", "ratio": bound}},
                       met=ratios["vs_broker"] <= bound,
                       note="MeshClient.call -> full broker -> ServiceRunner handler, against the raw "
                            "full-broker hop of the same run (issue 18)")
        out[key] = fig
    out.update(curve_figures(rounds.get(PEER_CURVE, {})))
    return out


def curve_figures(curve: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """The growth curve's figures: the raw client's p50 through the full broker per count of
    connected peers, as a ratio to the first count (informational; the last label, the first
    count measured again after the others, shows the run's drift)."""
    if not curve:
        return {}
    labels = list(curve)
    first = statistics.median(curve[labels[0]])
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        value = statistics.median(curve[label])
        out[f"{PEER_CURVE}_{label.replace(' ', '_')}"] = {
            "label": f"broker p50, {label} peer(s)", "unit": "us", "value": round(value, 1),
            "peers": label, "ratio_to_first": _ratio(value, first), "group": CURVE_GROUP,
            "target": None, "met": None, "informational": True,
            "rounds": [round(v, 1) for v in curve[label]],
            "note": "the measured raw client plus idle CURVE peers, each registered and heartbeating"}
    return out


def curve_table(figs: dict[str, dict[str, Any]]) -> str:
    """The growth curve section: p50 per count of connected peers and its ratio to the first."""
    lines = ["broker growth curve (issue 18): raw client p50 through the full broker with N connected peers "
             "(the client and N-1 idle peers, registered and heartbeating; informational)",
             f"{'peers':<12}{'p50 us':>10}{'vs first':>10}  runs"]
    for fig in figs.values():
        lines.append(f"{fig['peers']:<12}{fig['value']:>10,.0f}{fig['ratio_to_first']:>9.2f}x  "
                     + " ".join(f"{v:.0f}" for v in fig["rounds"]))
    return "\n".join(lines)


def _target_text(fig: dict[str, Any]) -> str:
    if fig.get("informational"):
        return "info only"
    if not fig["target"]:
        return "-"
    short = {"forwarder": "fwd", "direct": "direct", "broker": "broker"}
    parts = [f"{'<=' if t['bound'] == 'max' else '>='}{t['ratio']}x {short[t['baseline']]}"
             for t in fig["target"].values()]
    return ", ".join(parts)


def table(figs: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table of every figure: the broker rows, then the keyvault, storage, meshctl
    start-up, authn and authz sections (each only when it ran)."""
    sections = []
    broker = {k: f for k, f in figs.items() if f.get("group") is None}
    if broker:
        sections.append(_broker_table(broker))
    for group, render in ((CURVE_GROUP, curve_table), (KEYVAULT_GROUP, keyvault_table), (STORAGE_GROUP, storage_table),
                          (startup.GROUP, startup.table), (authn.GROUP, authn.table), (authz.GROUP, authz.table),
                          (pairing.GROUP, pairing.table), (plugins.GROUP, plugins.table),
                          (audit.GROUP, audit.table)):
        part = {k: f for k, f in figs.items() if f.get("group") == group}
        if part:
            sections.append(render(part))
    return "\n\n".join(sections)


def _broker_table(figs: dict[str, dict[str, Any]]) -> str:
    head = (f"{'figure':<33}{'broker':>10}{'direct':>10}{'forwarder':>11}"
            f"{'vs direct':>11}{'vs fwd':>9}  {'target':<29}{'met':<4}")
    lines = [head, "-" * len(head)]
    for fig in figs.values():
        met = "" if fig["met"] is None else ("yes" if fig["met"] else "NO")
        label = f"{fig['label']} ({fig['unit']})"
        lines.append(f"{label:<33}{fig['value']:>10,.0f}{fig['baselines']['direct']:>10,.0f}"
                     f"{fig['baselines']['forwarder']:>11,.0f}{fig['ratios']['vs_direct']:>10.2f}x"
                     f"{fig['ratios']['vs_forwarder']:>8.2f}x  {_target_text(fig):<29}{met:<4}")
    if "runtime_rtt_p50_us" in figs:
        runtime = figs["runtime_rtt_p50_us"]
        lines.append("runtime rows: value = MeshClient -> broker -> ServiceRunner end to end; p50 "
                     f"{runtime['ratios']['vs_broker']:.2f}x the raw full-broker p50 (paired "
                     f"{runtime['paired_ratios']['vs_broker']:.2f}x; target <= "
                     f"{RUNTIME_TARGETS['runtime_rtt_p50_us']}x)")
    return "\n".join(lines)


def _p(samples: list[float], q: float) -> float:
    """The q-quantile of samples in seconds, in microseconds (nearest rank, as the broker rows)."""
    return percentile(samples, q) * 1e6


def keyvault_figures(kv: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The keyvault figures (informational, no target) from :func:`bench.keyvault.measure`."""
    unlock, fetch = kv["unlock"], kv["fetch"]
    runs = unlock["runs"]
    prof = unlock["profile"]
    profile = (f"Argon2id {prof['memory_kib']} KiB, t={prof['iterations']}, p={prof['parallelism']} "
               "([argon2.master], mesh.toml)")
    walls = [r["unlock_s"] for r in runs]
    rss = [round(r["rss_increase_kib"] / 1024, 1) for r in runs]
    base = {"target": None, "met": None, "informational": True, "group": KEYVAULT_GROUP}
    unlock_details = {
        "profile": prof, "keystore": unlock["keystore"], "runs": walls,
        "derive_s": [r["derive_s"] for r in runs], "open_keys_ms": [round(r["open_keys_s"] * 1e3, 3) for r in runs],
        "cpu_s": [r["cpu_s"] for r in runs], "rss_increase_mib": rss,
        # setup.initialise (meshctl init) derives once too: timed apart, not in the unlock figure.
        "initialise_s": unlock["initialise_s"],
        "initialise_rss_increase_mib": round(unlock["initialise_rss_increase_kib"] / 1024, 1)}
    unlock_note = ("services.keyvault.store.derive_master + open_keys on a state made by setup.initialise, "
                   f"{profile}; one fresh child process per run; wall time; not a target")
    out: dict[str, dict[str, Any]] = {
        "kv_unlock_median_s": {"label": "unlock, master profile, median", "unit": "s",
                               "value": round(statistics.median(walls), 3), **base, "note": unlock_note,
                               "detail": f"{len(runs)} runs; {profile}", **unlock_details},
        "kv_unlock_max_s": {"label": "unlock, master profile, max", "unit": "s", "value": round(max(walls), 3),
                            **base, "note": unlock_note,
                            "detail": (f"derive median {statistics.median(unlock_details['derive_s']):.2f} s, "
                                       f"open_keys median {statistics.median(unlock_details['open_keys_ms']):.2f} ms; "
                                       f"setup.initialise {unlock['initialise_s']:.2f} s (not included)"),
                            "runs": walls},
        "kv_unlock_rss_mib": {"label": "unlock peak RSS increase, max", "unit": "MiB", "value": max(rss), **base,
                              "note": "the unlock child's peak RSS (VmHWM) minus its RSS before; not a target",
                              "detail": f"median {statistics.median(rss):,.0f} MiB; the child's own VmHWM - VmRSS",
                              "runs": rss},
    }
    cpu = fetch["keyvault_cpu_us_per_call"]
    calls = f"{fetch['calls']} sequential calls as storage after {fetch['warmup']} warm-up, {fetch['blocks']} blocks"
    rows = (("keys_get", "kv_key_get", "key fetch keyvault.keys.get",
             f'{calls}; {{"purpose": "sqlcipher"}}; keyvault CPU {cpu["keys_get"]:,.0f} us/call'),
            ("health", "kv_health", "keyvault.health, same client",
             f"comparison: no key, no audit; keyvault CPU {cpu['health']:,.0f} us/call"))
    for name, key, label, detail in rows:
        samples = fetch["samples"][name]
        note = ("MeshClient -> full broker -> keyvault (python -m services.keyvault), sequential; "
                "small test Argon2 profile for setup, keystore = file; not a target")
        out[f"{key}_p50_us"] = {"label": f"{label} p50", "unit": "us", "value": round(_p(samples, 0.5), 1), **base,
                                "note": note, "detail": detail, "calls": len(samples),
                                "keyvault_cpu_us_per_call": cpu[name]}
        out[f"{key}_p99_us"] = {"label": f"{label} p99", "unit": "us", "value": round(_p(samples, 0.99), 1),
                                **base, "note": note, "detail": "", "calls": len(samples)}
    spool = fetch["spool"]
    note = ("Spool.append + Spool.sync (fsync) of one key-release audit record in the bench process, same file "
            "system as keyvault's spool; what keyvault does per release before it answers; not a target")
    both, append = spool["append_fsync"], spool["append"]
    out["kv_spool_fsync_p50_us"] = {"label": "audit spool append+fsync p50", "unit": "us",
                                    "value": round(_p(both, 0.5), 1), **base, "note": note,
                                    "detail": f"{len(both)} records; append alone p50 {_p(append, 0.5):,.1f} us",
                                    "append_p50_us": round(_p(append, 0.5), 1)}
    out["kv_spool_fsync_p99_us"] = {"label": "audit spool append+fsync p99", "unit": "us",
                                    "value": round(_p(both, 0.99), 1), **base, "note": note, "detail": "",
                                    "append_p99_us": round(_p(append, 0.99), 1)}
    return out


def keyvault_table(figs: dict[str, dict[str, Any]]) -> str:
    """The keyvault section of the table: value, unit and a detail per figure, no target."""
    head = f"{'keyvault figure':<40}{'value':>10}  {'unit':<5} detail"
    lines = ["keyvault: informational figures, no targets (the keyvault issue sets none). Both bench homes",
             'set [keyvault] keystore = "file": no desktop keyring / Secret Service is used or needed.',
             head, "-" * 110]
    for fig in figs.values():
        value = f"{fig['value']:,.2f}" if fig["unit"] == "s" else f"{fig['value']:,.0f}"
        lines.append(f"{fig['label']:<40}{value:>10}  {fig['unit']:<5} {fig['detail']}")
    return "\n".join(lines)


#: In-process comparisons: figure -> (rounds key, label, unit, variant, baseline variant, min ratio or None).
#: Every value is a rate (higher is better); the targets are the storage issue's.
STORAGE_PAIRS: Final[dict[str, tuple[str, str, str, str, str, float | None]]] = {
    "st_sqlcipher_insert_rows_s": ("sql_insert", "SQLCipher bulk insert, 1 txn", "rows/s", "sqlcipher", "sqlite3", 0.7),
    "st_sqlcipher_select_s": ("sql_select", "SQLCipher point select", "rows/s", "sqlcipher", "sqlite3", 0.7),
    "st_duckdb_ingest_rows_s": ("duck_insert", "DuckDB encrypted bulk insert (ingest)", "rows/s", "encrypted",
                                "plain", 0.8),
    "st_duckdb_write_rows_s": ("duck_write", "DuckDB encrypted INSERT SELECT+CHECKPOINT", "rows/s", "encrypted",
                               "plain", None),
    "st_duckdb_scan_rows_s": ("duck_scan", "DuckDB encrypted cold scan aggregate", "rows/s", "encrypted", "plain",
                              None),
    "st_rocksdb_put_s": ("kv_put", "RocksDB KvStore.put_many (sealed)", "items/s", "sealed", "raw", 0.3),
    "st_rocksdb_get_s": ("kv_get", "RocksDB KvStore.get (sealed)", "items/s", "sealed", "raw", 0.2),
    "st_stream_write_mb_s": ("stream_write", "STREAM write", "MB/s", "stream", "aesgcm", None),
    "st_stream_read_mb_s": ("stream_read", "STREAM read", "MB/s", "stream", "aesgcm", None),
}
_BASELINE_NAMES: Final = {"sqlite3": "sqlite3", "plain": "plain duckdb", "raw": "raw rocksdict",
                          "aesgcm": "raw AESGCM"}
#: The issue's memory target: a 1 GiB file written and read with less than this resident.
RSS_TARGET_MIB: Final = 64.0
#: Mesh methods (bench/storage_mesh.py) and their labels; ``health`` is the comparison round trip.
MESH_METHODS: Final = {"kv_put": "storage.kv.put", "kv_get": "storage.kv.get",
                       "records_insert": "storage.records.insert", "records_get": "storage.records.get"}


def _pair_figure(per: list[dict[str, float]], label: str, unit: str, variant: str, base: str,
                 bound: float | None, detail: str) -> dict[str, Any]:
    """``variant`` against ``base``. The ratio (and the target) is the paired one, the median of the
    per-round ratios: the twins run side by side within a round, steps alternating, so each round's
    ratio compares measurements made in the same seconds, while the medians of the two series may
    come from different rounds on a busy machine. The ratio of the medians is kept beside it."""
    value = statistics.median(p[variant] for p in per)
    baseline = statistics.median(p[base] for p in per)
    paired = round(statistics.median(p[variant] / p[base] for p in per), 3)
    return {"label": label, "unit": unit, "value": round(value, 1), "group": STORAGE_GROUP,
            "baseline": {"name": _BASELINE_NAMES[base], "value": round(baseline, 1)}, "ratio": paired,
            "ratio_of_medians": _ratio(value, baseline),
            "target": None if bound is None else {"baseline": _BASELINE_NAMES[base], "bound": "min", "ratio": bound,
                                                  "on": "paired ratio"},
            "met": None if bound is None else paired >= bound,
            "detail": f"medians {_ratio(value, baseline):.2f}x; {detail}",
            "rounds": {v: [round(p[v], 1) for p in per] for v in per[0]}}


def storage_figures(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The storage figures from :func:`bench.storage.measure`: in-process ratios (SQLCipher, DuckDB,
    RocksDB, STREAM), FileStore peak RSS, the mesh calls, backup and restore."""
    info, rounds = raw["info"], raw["rounds"]
    sql, duck, rocks, stream = info["sqlcipher"], info["duckdb"], info["rocksdb"], info["stream"]
    unkeyed = {k: round(statistics.median(p["sqlcipher"] / p["sqlcipher-nokey"] for p in rounds[k]), 3)
               for k in ("sql_insert", "sql_select")}
    # Whether the key-value formats ran compiled (docs/storage.md, "Compiled formats"); results
    # written before the bench recorded it say nothing.
    formats = {True: "formats compiled (mypyc)", False: "formats interpreted"}.get(rocks.get("compiled"),
                                                                                     "formats' build not recorded")
    kv_rounds = f", {rocks['rounds']} rounds" if "rounds" in rocks else ""
    details = {
        "sql_insert": (f"{sql['rows']:,} rows, WAL, synchronous=FULL; {unkeyed['sql_insert']:.2f}x unkeyed "
                       f"sqlcipher3 (SQLite {sql['sqlcipher_sqlite_version']} vs sqlite3 {sql['sqlite3_version']})"),
        "sql_select": (f"{sql['rows']:,} by primary key, cold page cache; {unkeyed['sql_select']:.2f}x unkeyed "
                       "sqlcipher3"),
        "duck_insert": (f"{duck['rows']:,} rows, the store's JSON-parameter INSERT, "
                        f"{duck['rows_per_transaction']:,} rows per transaction"),
        "duck_write": f"{duck['scan_rows']:,} rows generated in the engine, then CHECKPOINT",
        "duck_scan": f"{duck['scan_rows']:,} rows, {duck['cold_scans']} scans each after a fresh ATTACH",
        "kv_put": f"{rocks['items']:,} values of 100-200 B, synced batches of {rocks['batch']}{kv_rounds}; {formats}",
        "kv_get": f"{rocks['items']:,} point gets of the same values{kv_rounds}; {formats}",
        "stream_write": f"{stream['bytes'] / 2**20:,.0f} MiB, {stream['chunk_bytes'] // 1024} KiB chunks, to a file",
        "stream_read": f"{stream['bytes'] / 2**20:,.0f} MiB read back from the file",
    }
    out: dict[str, dict[str, Any]] = {}
    for key, (rkey, label, unit, variant, base, bound) in STORAGE_PAIRS.items():
        out[key] = _pair_figure(rounds[rkey], label, unit, variant, base, bound, details[rkey])
    out["st_sqlcipher_insert_rows_s"]["ratio_vs_unkeyed_sqlcipher"] = unkeyed["sql_insert"]
    out["st_sqlcipher_select_s"]["ratio_vs_unkeyed_sqlcipher"] = unkeyed["sql_select"]
    rss = raw["rss"]
    size = f"{rss['bytes'] / 2**30:g} GiB" if rss["bytes"] >= 2**30 else f"{rss['bytes'] / 2**20:,.0f} MiB"
    increase = round(rss["rss_increase_kib"] / 1024, 1)
    out["st_file_rss_mib"] = {
        "label": f"FileStore {size} write+read, peak RSS", "unit": "MiB", "value": increase,
        "group": STORAGE_GROUP, "baseline": None, "ratio": None,
        "target": {"bound": "max_abs", "value": RSS_TARGET_MIB, "stated_for_bytes": 2**30},
        "met": increase < RSS_TARGET_MIB,
        "detail": (f"increase over the child's RSS; write {rss['write_mb_s']:,.0f} MB/s, read "
                   f"{rss['read_mb_s']:,.0f} MB/s" + ("" if rss["bytes"] >= 2**30 else "; target stated for 1 GiB")
                   + ("" if rss["hwm_reset"] else "; VmHWM could not be reset: includes the child's start")),
        **rss}
    out.update(_kv_growth_figures(raw.get("kv_growth")))
    out.update(_mesh_figures(raw["mesh"]))
    return out


def _kv_growth_figures(growth: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """KvStore get p50 at each store size (issue 18's growth curve), each against the smallest size."""
    if not growth or not growth["points"]:
        return {}
    points = growth["points"]
    first = points[0]
    out: dict[str, dict[str, Any]] = {}
    for point in points:
        n = point["entries"]
        out[f"st_kv_get_p50_us_{n}"] = {
            "label": f"KvStore.get p50 at {n:,} entries", "unit": "us", "value": point["p50_us"],
            "group": STORAGE_GROUP, "target": None, "met": None, "informational": True,
            "baseline": {"name": f"p50 at {first['entries']:,} entries", "value": first["p50_us"]},
            "ratio": _ratio(point["p50_us"], first["p50_us"]),
            "detail": (f"growth curve: one store filled to each size in turn ({growth['value_bytes']} B values), "
                       f"{growth['samples']:,} gets of random present names timed one by one; p99 "
                       f"{point['p99_us']} us; filled in {point['fill_s']} s. Flat expected: a get is one "
                       "RocksDB point lookup (bloom filters, block cache) plus per-entry crypto, independent of "
                       "size; what grows is RocksDB's levels once the data leaves the memtable and cache")}
    return out


def _mesh_figures(mesh: dict[str, Any]) -> dict[str, dict[str, Any]]:
    calls = mesh["calls"]
    samples, tput = calls["samples"], calls["throughput"]
    health = {"p50": _p(samples["health"], 0.5), "p99": _p(samples["health"], 0.99),
              "tput": statistics.median(tput["health"])}
    base = {"group": STORAGE_GROUP, "target": None, "met": None, "informational": True}
    out: dict[str, dict[str, Any]] = {}
    for method, target in MESH_METHODS.items():
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            value = _p(samples[method], q)
            out[f"st_mesh_{method}_{name}_us"] = {
                "label": f"{target} {name}", "unit": "us", "value": round(value, 1), **base,
                "baseline": {"name": "storage.health", "value": round(health[name], 1)},
                "ratio": _ratio(value, health[name]),
                "detail": f"{len(samples[method]):,} sequential calls as {mesh['caller']}, "
                          f"per-round p50 {calls['round_p50_us'][method]}" if name == "p50" else ""}
        value = statistics.median(tput[method])
        out[f"st_mesh_{method}_calls_s"] = {
            "label": f"{target} pipelined", "unit": "call/s", "value": round(value, 1), **base,
            "baseline": {"name": "storage.health", "value": round(health["tput"], 1)},
            "ratio": _ratio(value, health["tput"]), "rounds": [round(v, 1) for v in tput[method]],
            "detail": f"{calls['messages']:,} calls per round, {calls['window']} in flight on one client"}
    out.update(loaded_get_figures(mesh))
    out.update(backup_figures(mesh))
    return out


def loaded_get_figures(mesh: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """storage.kv.get while puts are in flight, against the gets alone (results written before the
    bench measured it have none)."""
    calls = mesh["calls"]
    loaded = calls.get("gets_under_puts")
    if not loaded:
        return {}
    base = {"group": STORAGE_GROUP, "target": None, "met": None, "informational": True}
    out: dict[str, dict[str, Any]] = {}
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        value, alone = _p(loaded["samples"], q), _p(calls["samples"]["kv_get"], q)
        out[f"st_mesh_kv_get_under_puts_{name}_us"] = {
            "label": f"storage.kv.get {name}, {calls['window']} puts in flight", "unit": "us",
            "value": round(value, 1), **base,
            "baseline": {"name": f"storage.kv.get {name} alone", "value": round(alone, 1)},
            "ratio": _ratio(value, alone),
            "detail": (f"{len(loaded['samples']):,} sequential gets while {calls['window']} puts stay in flight on "
                       f"the same client ({statistics.median(loaded['puts_s']):,.0f} puts/s answered meanwhile, "
                       f"median of rounds); per-round p50 {loaded['round_p50_us']}") if name == "p50" else ""}
    return out


def _size(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib:,} MiB"


#: What the slopes mean (bench/storage_mesh.py's docstring has the measured detail).
BACKUP_SLOPE_NOTE: Final = (
    "storage's user CPU per GiB (the code's own work) stays flat: see the CPU slope's split; its kernel "
    "time grows, as filling the page cache cost ~10x per GiB past the first ~4-5 GiB of new cache on the "
    "VM measured (a 4 GiB restore writes ~8 GiB; a backup drops its archive from the cache as it writes it); "
    "the wall clock adds waits for the disk and, on a busy machine, for a CPU; fixed costs (one Argon2id, "
    "audit) make small sizes dearer")


def backup_figures(mesh: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The backup and restore growth curve (issue 18): at each size of data stored through the mesh,
    the job's seconds (median of its runs), seconds and MiB/s per GiB of that data, storage's CPU
    seconds per GiB, the archive's size; then the slopes: per-GiB cost at the largest size over the
    smallest (flat = 1), wall clock and CPU."""
    base = {"group": STORAGE_GROUP, "target": None, "met": None, "informational": True, "baseline": None,
            "ratio": None}
    out: dict[str, dict[str, Any]] = {}
    points = mesh["curve"]
    fills = [p["fill"] for p in points if "fill" in p]
    if fills:
        files, last = sum(f["files"] for f in fills), fills[-1]
        seconds = sum(f["upload_s"] for f in fills)
        out["st_file_upload_mb_s"] = {
            "label": "file upload over the mesh", "unit": "MB/s",
            "value": round(files * last["file_bytes"] / seconds / 1e6, 1), **base,
            "detail": (f"{files} files of {last['file_bytes'] >> 20} MiB, 256 KiB pieces, {last['uploads_at_once']} "
                       f"uploads at once (the backup curve's fill; kv puts and record inserts "
                       f"{last['puts_at_once']} in flight)"),
            "fills": fills}
    curves: dict[str, list[tuple[int, float]]] = {}
    split: dict[str, list[tuple[int, dict[str, float]]]] = {"backup": [], "restore": []}
    for point in points:
        mib, size = point["mib"], _size(point["mib"])
        stored = point.get("stored")
        archive = point["backup"].get("result", {}).get("bytes")
        for name in ("backup", "restore"):
            got = point[name]
            method = "storage.backup.create" if name == "backup" else "storage.backup.restore"
            if "error" in got:
                out[f"st_{name}_s_{mib}"] = {"label": f"{name} at {size} stored ({method})", "unit": "s",
                                             "value": None, **base, "mib": mib, "error": got["error"],
                                             "detail": "FAILED: " + got["error"].splitlines()[0][:90]}
                continue
            if stored is None or archive is None:
                raise ValueError(f"backup curve point {mib}: measured without its stored data or archive")
            gib = stored["bytes"] / 2**30
            runs = got.get("runs", [got])
            phases = ", ".join(f"{k} {v:.2f}" for k, v in got["phases_s"].items())
            where = ("while serving, passphrase-wrapped" if name == "backup"
                     else "into a fresh home by passphrase, each run read back: "
                          f"{got['verified']['files']} whole files ({got['verified']['file_bytes'] >> 20} MiB), "
                          f"{got['verified']['kv']} kv values, {got['verified']['records']} records")
            each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
            out[f"st_{name}_s_{mib}"] = {
                "label": f"{name} at {size} stored", "unit": "s", "value": got["seconds"], **base, "mib": mib,
                "stored_bytes": stored["bytes"], "archive_bytes": archive, "wall_s": got["wall_s"],
                "cpu_s": got["cpu_s"], "run_queue_s": got["run_queue_s"], "phases_s": got["phases_s"],
                "runs": runs, "result": got["result"], "verified": got.get("verified"),
                "detail": (f"{method}, job's own time, median of {len(runs)} run(s) "
                           f"({each} s), {where}; phases (s, to the "
                           f"50 ms poll) {phases}")}
            value = round(got["seconds"] / gib, 3)
            curves.setdefault(name, []).append((mib, value))
            out[f"st_{name}_s_per_gib_{mib}"] = {
                "label": f"{name} per GiB at {size}", "unit": "s/GiB", "value": value, **base, "mib": mib,
                "detail": f"{stored['bytes'] / 2**20:,.0f} MiB of data stored through the mesh"}
            out[f"st_{name}_mib_s_{mib}"] = {
                "label": f"{name} rate at {size}", "unit": "MiB/s",
                "value": round(stored["bytes"] / 2**20 / got["seconds"], 1), **base, "mib": mib,
                "detail": f"MiB of data stored per second of the job ({archive / 2**20 / got['seconds']:,.0f} "
                          "MiB/s of archive)"}
            if got["cpu_s"] is not None:
                cpu = round(got["cpu_s"] / gib, 3)
                curves.setdefault(f"{name}_cpu", []).append((mib, cpu))
                modes = {}
                if got.get("user_s") is not None:
                    modes = {"user_s_per_gib": round(got["user_s"] / gib, 3),
                             "system_s_per_gib": round(got["system_s"] / gib, 3)}
                    split[name].append((mib, modes))
                out[f"st_{name}_cpu_s_per_gib_{mib}"] = {
                    "label": f"{name} CPU per GiB at {size}", "unit": "s/GiB", "value": cpu, **base, "mib": mib,
                    **modes,
                    "detail": ("the storage process's CPU time during the job, every thread"
                               + (f" (user {modes['user_s_per_gib']:.2f}, kernel {modes['system_s_per_gib']:.2f})"
                                  if modes else "")
                               + f"; off CPU {max(0.0, value - cpu):.2f} s/GiB (waiting for the disk or for a CPU; "
                               f"its threads waited {got['run_queue_s'] / gib:.2f} s/GiB in the run queue, summed "
                               "over threads)")}
        if stored is not None and archive is not None:
            out[f"st_backup_archive_mib_{mib}"] = {
                "label": f"archive at {size} stored", "unit": "MiB", "value": round(archive / 2**20, 1), **base,
                "mib": mib, "archive_bytes": archive,
                "baseline": {"name": "data stored", "value": round(stored["bytes"] / 2**20, 1)},
                "ratio": _ratio(archive, stored["bytes"]),
                "detail": (f"{stored['files']} files, {stored['kv_entries']:,} kv entries, {stored['records']:,} "
                           f"records, {stored['analytics_rows']:,} analytics rows; encrypted blobs, RocksDB, "
                           "SQLCipher and DuckDB copies plus the archive's own framing")}
    for key, curve in curves.items():
        name, cpu = key.removesuffix("_cpu"), key.endswith("_cpu")
        kind = "CPU " if cpu else ""
        for mib, value in curve[1:]:
            fig = out[f"st_{name}_{'cpu_' if cpu else ''}s_per_gib_{mib}"]
            fig["baseline"] = {"name": f"at {_size(curve[0][0])}", "value": curve[0][1]}
            fig["ratio"] = _ratio(value, curve[0][1])
        if len(curve) >= 2:
            (low, first), (high, last) = curve[0], curve[-1]
            fig = out[f"st_{name}_{'cpu_' if cpu else ''}slope"] = {
                "label": f"{name} {kind}per-GiB slope, {_size(high)} / {_size(low)}", "unit": "x",
                "value": _ratio(last, first), **base, "from_mib": low, "to_mib": high,
                "detail": f"{kind}s/GiB {last:.2f} at {_size(high)} over {first:.2f} at {_size(low)} (flat = 1)"
                          + ("" if cpu else "; " + BACKUP_SLOPE_NOTE)}
            modes = [m for mib, m in split[name] if mib in (low, high)]
            if cpu and len(modes) == 2:
                for mode in ("user", "system"):
                    fig[f"{mode}_slope"] = _ratio(modes[1][f"{mode}_s_per_gib"], modes[0][f"{mode}_s_per_gib"])
                fig["detail"] += (f"; user CPU {fig['user_slope']:.2f}x (the code's own work), kernel "
                                  f"{fig['system_slope']:.2f}x")
    return out


def storage_errors(figs: dict[str, dict[str, Any]]) -> list[str]:
    """What the storage section could not measure (a failed backup or restore job)."""
    return [f"{fig['label']}: {fig['error']}" for fig in figs.values() if fig.get("error")]


def _storage_target(fig: dict[str, Any]) -> str:
    target = fig["target"]
    if not target:
        return "info only" if fig.get("informational") else "-"
    if target["bound"] == "max_abs":
        return f"<{target['value']:g} {fig['unit']}"
    return f">={target['ratio']}x"


def _storage_number(value: float, unit: str) -> str:
    return f"{value:,.2f}" if unit in ("s", "s/GiB", "MiB", "x") else f"{value:,.0f}"


def storage_table(figs: dict[str, dict[str, Any]]) -> str:
    """The storage section: value, baseline and ratio where there is a twin, target, met, detail."""
    head = (f"{'storage figure':<44}{'value':>11}  {'unit':<7}{'baseline':>11}  {'(of)':<15}{'ratio':>7}  "
            f"{'target':<10}{'met':<4} detail")
    lines = ["storage: encrypted engines against plaintext twins in process (rates, higher is better; value and",
             "baseline are medians of the rounds, ratio and target the median of the per-round ratios), then the",
             "real storage service over the mesh as authn (baseline: the same client's storage.health round trip),",
             "then backup and restore jobs as meshctl.", head, "-" * 150]
    for fig in figs.values():
        value = "-" if fig["value"] is None else _storage_number(fig["value"], fig["unit"])
        base = fig.get("baseline")
        base_text = (f"{_storage_number(base['value'], fig['unit']):>11}  {base['name']:<15}" if base
                     else f"{'':>11}  {'':<15}")
        ratio = f"{fig['ratio']:>6.2f}x" if fig.get("ratio") is not None else f"{'':>7}"
        met = "" if fig["met"] is None else ("yes" if fig["met"] else "NO")
        lines.append(f"{fig['label']:<44}{value:>11}  {fig['unit']:<7}{base_text}{ratio}  "
                     f"{_storage_target(fig):<10}{met:<4} {fig['detail']}")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    """What the figures were measured on, and how busy it was."""
    return {"cpus": os.cpu_count(), "cpu_model": _cpu_model(), "platform": platform.platform(),
            "python": platform.python_version(), "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version(),
            "msgpack": ".".join(map(str, msgpack.version)), "commit": _git("rev-parse", "HEAD"),
            # The broker measured is the working tree: say whether it differs from the commit.
            "tracked_changes": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()]}


def write(figs: dict[str, dict[str, Any]], params: dict[str, Any], info: dict[str, Any],
          path: Path | None = None) -> Path:
    """Write the results JSON (``bench/results/latest.json`` by default) and return its path."""
    path = path or RESULTS / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    targeted = [f["met"] for f in figs.values() if f["met"] is not None]
    doc = {"timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "machine": info, "params": params, "figures": figs, "all_targets_met": all(targeted)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", "utf-8")
    tmp.replace(path)
    return path

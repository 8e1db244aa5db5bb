"""Turning per-round samples into figures, a table and ``bench/results/latest.json``.

Each figure's value is the median across rounds; ratios are full broker over
baseline (round trips: lower is better; throughput: higher is better). The
paired ratio (the median of the per-round ratios, each from the same few
seconds) is kept too: it is the steadier number when other work shares the
machine. The keyvault figures (bench/keyvault.py) have no baseline and no target: they
are printed in a section of their own and marked informational in the JSON.
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
#: The real Python runtime end to end: reported, never a target.
RUNTIME_FIGURES: Final = {"runtime_rtt_p50_us": "runtime round trip p50",
                          "runtime_rtt_p99_us": "runtime round trip p99"}
#: Figures of this group (bench/keyvault.py) are informational, printed in their own section.
KEYVAULT_GROUP: Final = "keyvault"

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
        out[key] = {"label": label, "unit": "us", "value": round(value, 1), "baselines": bases,
                    "ratios": {f"vs_{s}": _ratio(value, v) for s, v in bases.items()},
                    "target": None, "met": None, "informational": True,
                    "note": "MeshClient.call -> full broker -> ServiceRunner handler; not a target",
                    "rounds": {"runtime": [round(v, 1) for v in values]}}
    return out


def _target_text(fig: dict[str, Any]) -> str:
    if fig.get("informational"):
        return "info only"
    if not fig["target"]:
        return "-"
    short = {"forwarder": "fwd", "direct": "direct"}
    parts = [f"{'<=' if t['bound'] == 'max' else '>='}{t['ratio']}x {short[t['baseline']]}"
             for t in fig["target"].values()]
    return ", ".join(parts)


def table(figs: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table of every figure."""
    head = (f"{'figure':<33}{'broker':>10}{'direct':>10}{'forwarder':>11}"
            f"{'vs direct':>11}{'vs fwd':>9}  {'target':<29}{'met':<4}")
    lines = [head, "-" * len(head)]
    for fig in figs.values():
        if fig.get("group") == KEYVAULT_GROUP:
            continue
        met = "" if fig["met"] is None else ("yes" if fig["met"] else "NO")
        label = f"{fig['label']} ({fig['unit']})"
        lines.append(f"{label:<33}{fig['value']:>10,.0f}{fig['baselines']['direct']:>10,.0f}"
                     f"{fig['baselines']['forwarder']:>11,.0f}{fig['ratios']['vs_direct']:>10.2f}x"
                     f"{fig['ratios']['vs_forwarder']:>8.2f}x  {_target_text(fig):<29}{met:<4}")
    lines.append("runtime rows: value = MeshClient -> broker -> ServiceRunner end to end (informational, "
                 f"{figs['runtime_rtt_p50_us']['ratios']['vs_broker']:.2f}x the raw full-broker p50)")
    keyvault = {k: f for k, f in figs.items() if f.get("group") == KEYVAULT_GROUP}
    if keyvault:
        lines += ["", keyvault_table(keyvault)]
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
                              "note": "ru_maxrss of the unlock child after minus before the unlock; not a target",
                              "detail": f"median {statistics.median(rss):,.0f} MiB; the child's own ru_maxrss",
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

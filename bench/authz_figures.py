"""The authz bench's figures and their table (bench/authz.py measures them)."""

from __future__ import annotations

import statistics
from typing import Any, Final

from .authn_figures import ratio_of, rows
from .measure import percentile

GROUP: Final = "authz"
#: Targets (issue 15).
CACHED_TARGET_US: Final = 20.0    # a cached in-process decision p50 <= this
READ_TARGET: Final = 3.5          # the end-to-end user read p50 <= this x storage.health p50
#: The processes whose CPU per call the read figures give.
PROCESSES: Final = ("broker", "storage", "authn", "authz")
INFO: Final = {"group": GROUP, "target": None, "met": None, "informational": True}


def _us(samples: list[float], q: float) -> float:
    return percentile(samples, q) * 1e6


def _local(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    local = raw["local"]
    samples, rounds = local["samples"], local["round_p50_us"]
    p50 = {k: _us(s, 0.5) for k, s in samples.items()}
    p99 = {k: _us(s, 0.99) for k, s in samples.items()}
    where = (f"{local['calls']:,} calls of Authority.check in the bench process: shipped policies "
             f"({local['policies']}), the caller's declared role, {local['grants']} consent grants of the owner")
    cached = p50["cached"]
    return {
        "authz_local_cached_p50_us": {
            "label": "Authority.check cached p50", "unit": "us", "value": round(cached, 2), "group": GROUP,
            "baseline": {"name": "uncached", "value": round(p50["uncached"], 2)},
            "ratio": ratio_of(cached, p50["uncached"]), "target": {"bound": "max_abs", "value": CACHED_TARGET_US},
            "met": cached <= CACHED_TARGET_US, "informational": False, "round_p50_us": rounds,
            "detail": f"the same request again; {where}",
            "note": "service:frontend reads the owner's memories for the owner (what storage's gate asks)"},
        "authz_local_cached_p99_us": {
            "label": "Authority.check cached p99", "unit": "us", "value": round(p99["cached"], 2), **INFO,
            "baseline": None, "ratio": None, "detail": ""},
        "authz_local_uncached_p50_us": {
            "label": "Authority.check uncached p50", "unit": "us", "value": round(p50["uncached"], 1), **INFO,
            "baseline": {"name": "cedarpy alone", "value": round(p50["cedar"], 1)},
            "ratio": ratio_of(p50["uncached"], p50["cedar"]), "p99_us": round(p99["uncached"], 1),
            "detail": f"p99 {p99['uncached']:,.1f} us; {local['uncached_by']}"},
        "authz_local_cedar_p50_us": {
            "label": "cedarpy.is_authorized alone p50", "unit": "us", "value": round(p50["cedar"], 1), **INFO,
            "baseline": None, "ratio": None, "p99_us": round(p99["cedar"], 1),
            "detail": f"p99 {p99['cedar']:,.1f} us; the arguments decide() passes (pre-parsed PolicySet, Entities)"},
    }


def _cpu_text(cpu: dict[str, float | None]) -> str:
    if any(cpu.get(p) is None for p in PROCESSES):
        return "CPU n/a"
    return "CPU us/call " + " ".join(f"{p} {cpu[p]:,.0f}" for p in PROCESSES)


def _pair(mesh: dict[str, Any], method: str, base: str, names: tuple[str, str, str], target: float | None,
          detail: str) -> dict[str, dict[str, Any]]:
    """The p50 and p99 figures of ``method`` against ``base`` measured in the same rounds; a target
    (a ratio bound on the p50s of every sample) or None."""
    samples, rounds, cpus = mesh["samples"], mesh["round_p50_us"], mesh["cpu_us_per_call"]
    key, label, base_label = names
    out: dict[str, dict[str, Any]] = {}
    for q, v in (("p50", 0.5), ("p99", 0.99)):
        value, baseline = _us(samples[method], v), _us(samples[base], v)
        fig: dict[str, Any] = {"label": f"{label} {q}", "unit": "us", "value": round(value, 1), **INFO,
                               "baseline": {"name": base_label, "value": round(baseline, 1)},
                               "ratio": ratio_of(value, baseline), "detail": ""}
        if q == "p50":
            paired = round(statistics.median(a / b for a, b in zip(rounds[method], rounds[base], strict=True)), 3)
            fig.update(paired_ratio=paired, round_p50_us={method: rounds[method], base: rounds[base]},
                       cpu_us_per_call={method: cpus[method], base: cpus[base]},
                       detail=f"{mesh['calls']:,} calls each; paired {paired:.2f}x; {detail}")
            if target is not None:
                fig.update(target={"baseline": base_label, "bound": "max", "ratio": target,
                                   "on": "p50 of every sample of the run"},
                           met=fig["ratio"] <= target, informational=False)
        out[f"{key}_{q}_us"] = fig
    return out


def _pipelined(pipelined: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Recorded decisions per second against unrecorded ones, pipelined: what the recording's fsyncs
    cost when decisions come together (they share them)."""
    rates = pipelined["calls_s"]
    recorded, cached = statistics.median(rates["check_audited"]), statistics.median(rates["check"])
    return {"authz_check_recorded_calls_s": {
        "label": "authz.check recorded, pipelined", "unit": "calls/s", "value": round(recorded), **INFO,
        "baseline": {"name": "authz.check from cache, pipelined", "value": round(cached)},
        "ratio": ratio_of(recorded, cached), "round_calls_s": rates,
        "detail": f"{pipelined['calls']:,} calls a round from {pipelined['window']} concurrent tasks; medians of "
                  "the rounds"}}


def figures(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Figures of the authz section: value, baseline, ratio, target and met (None: informational)."""
    mesh = raw["mesh"]
    cpus = mesh["cpu_us_per_call"]
    own = _us(mesh["samples"]["read_own"], 0.5)
    out = _local(raw)
    out.update(_pair(mesh, "check", "authz_health", ("authz_check", "authz.check", "authz.health"), None,
                     f"from authz's cache after the first; {_cpu_text(cpus['check'])}"))
    out.update(_pair(mesh, "check_audited", "authz_health",
                     ("authz_check_recorded", "authz.check recorded", "authz.health"), None,
                     "an allow on a sensitive category, recorded (fsynced by authz's audit thread) before it "
                     f"answers, every time; {_cpu_text(cpus['check_audited'])}"))
    out.update(_pipelined(mesh["pipelined"]))
    out.update(_pair(mesh, "read", "storage_health", ("authz_read", "user read (kv.get + token)", "storage.health"),
                     READ_TARGET, f"read: {_cpu_text(cpus['read'])}; storage.health: "
                                  f"{_cpu_text(cpus['storage_health'])}"))
    out["authz_read_own_p50_us"] = {
        "label": "own read (kv.get, no token) p50", "unit": "us", "value": round(own, 1), **INFO,
        "baseline": {"name": "storage.health", "value": out["authz_read_p50_us"]["baseline"]["value"]},
        "ratio": ratio_of(own, _us(mesh["samples"]["storage_health"], 0.5)),
        "detail": f"the same get without the gate (the caller's own value); {_cpu_text(cpus['read_own'])}"}
    for fig in out.values():
        fig.setdefault("note", f"MeshClient -> broker -> services as {raw['caller']} (role service, declared "
                               "with the user-data role); baselines: the same client's health calls in the same "
                               "rounds, order rotating")
    return out


def table(figs: dict[str, dict[str, Any]]) -> str:
    """The authz section of the bench's table."""
    return rows(figs, GROUP, [
        "authz: Authority.check in the bench process, cached and not, beside one cedarpy.is_authorized call;",
        "authz.check over the mesh (from cache, and recorded each time; one by one and pipelined) beside",
        "authz.health; a person's value read through storage with their token",
        "(authn.verify on every call, authz.check until storage holds the allow) beside storage.health",
        "and the gate-free own read."])

"""The authn bench's figures and their table (bench/authn.py measures them)."""

from __future__ import annotations

import statistics
from typing import Any, Final

from .measure import percentile

GROUP: Final = "authn"
#: Targets (issue 14).
VERIFY_TARGET: Final = 1.2        # authn.verify p50 <= this x authn.health p50
LOCAL_TARGET_US: Final = 100.0    # local verification p50 <= this



def ratio_of(value: float, baseline: float) -> float:
    return round(value / baseline, 3) if baseline else float("nan")


def figures(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Figures of the authn section: value, baseline, ratio, target and met (None: informational)."""
    info = {"group": GROUP, "target": None, "met": None, "informational": True}
    out: dict[str, dict[str, Any]] = {}
    login = raw["login"]
    prof = login["profile"]
    profile = f"Argon2id {prof['memory_kib']} KiB, t={prof['iterations']}, p={prof['parallelism']}"
    argon = {q: percentile(login["samples"]["argon2"], v) * 1e3 for q, v in (("p50", 0.5), ("p99", 0.99))}
    paired = round(statistics.median(a / b for a, b in zip(login["round_p50_ms"]["login"],
                                                            login["round_p50_ms"]["argon2"], strict=True)), 3)
    cpu = login["authn_cpu_ms_per_login"]
    cpu_text = "n/a" if cpu is None else f"{cpu:,.1f} ms/login"
    for q, v in (("p50", 0.5), ("p99", 0.99)):
        value = percentile(login["samples"]["login"], v) * 1e3
        out[f"authn_login_{q}_ms"] = {
            "label": f"authn.login.password {q}", "unit": "ms", "value": round(value, 2), **info,
            "baseline": {"name": "Argon2id verify", "value": round(argon[q], 2)}, "ratio": ratio_of(value, argon[q]),
            "detail": (f"{login['logins']} sequential logins as {raw['caller']}; Argon2id alone is "
                       f"{argon[q] / value:.0%} of it; authn CPU {cpu_text}" if q == "p50"
                       else f"Argon2id alone is {argon[q] / value:.0%} of it"),
            **({"paired_ratio": paired, "round_p50_ms": login["round_p50_ms"]["login"],
                "authn_cpu_ms_per_login": cpu} if q == "p50" else {}),
            "note": f"MeshClient -> broker -> authn, every login successful; {profile} ([argon2.authentication], "
                    "mesh.toml); not a target"}
    out["authn_argon2_verify_ms"] = {
        "label": "Argon2id verify alone, in process p50", "unit": "ms", "value": round(argon["p50"], 2), **info,
        "baseline": None, "ratio": None, "p99_ms": round(argon["p99"], 2),
        "hash_ms": round(login["argon2_hash_s"] * 1e3, 2), "round_p50_ms": login["round_p50_ms"]["argon2"],
        "detail": f"{profile}, argon2-cffi PasswordHasher; p99 {argon['p99']:,.1f} ms; one hash "
                  f"{login['argon2_hash_s'] * 1e3:,.1f} ms",
        "note": "the same number of verifies as logins, in the bench process, blocks alternating; not a target"}
    mesh = raw["mesh"]
    samples, tput, cpus = mesh["samples"], mesh["throughput"], mesh["authn_cpu_us_per_call"]
    health = {"p50": percentile(samples["health"], 0.5) * 1e6, "p99": percentile(samples["health"], 0.99) * 1e6,
              "calls_s": statistics.median(tput["health"])}
    rounds = mesh["round_p50_us"]
    note = (f"MeshClient -> broker -> authn as {raw['caller']}, presenting its own token; baseline: the same "
            "client's authn.health in the same rounds, order alternating")
    for q, v in (("p50", 0.5), ("p99", 0.99)):
        value = percentile(samples["verify"], v) * 1e6
        ratio = ratio_of(value, health[q])
        fig: dict[str, Any] = {"label": f"authn.verify {q}", "unit": "us", "value": round(value, 1),
                               "group": GROUP, "baseline": {"name": "authn.health", "value": round(health[q], 1)},
                               "ratio": ratio, "note": note}
        if q == "p50":
            paired = round(statistics.median(a / b for a, b in zip(rounds["verify"], rounds["health"], strict=True)),
                           3)
            cpu_text = ("n/a" if cpus["verify"] is None
                        else f"{cpus['verify']:,.0f} vs {cpus['health']:,.0f} us/call")
            fig.update(target={"baseline": "authn.health", "bound": "max", "ratio": VERIFY_TARGET,
                               "on": "p50 of every sample of the run"},
                       met=ratio <= VERIFY_TARGET, informational=False, paired_ratio=paired,
                       round_p50_us=rounds, authn_cpu_us_per_call=cpus,
                       detail=f"{mesh['calls']:,} sequential calls each; paired {paired:.2f}x; authn CPU {cpu_text}")
        else:
            fig.update(target=None, met=None, informational=True, detail="")
        out[f"authn_verify_{q}_us"] = fig
    value = statistics.median(tput["verify"])
    out["authn_verify_calls_s"] = {
        "label": "authn.verify pipelined", "unit": "call/s", "value": round(value, 1), **info,
        "baseline": {"name": "authn.health", "value": round(health["calls_s"], 1)},
        "ratio": ratio_of(value, health["calls_s"]), "rounds": {m: [round(x, 1) for x in tput[m]] for m in tput},
        "detail": f"{mesh['messages']:,} calls per round, {mesh['window']} in flight on one client", "note": note}
    local = raw["local"]
    alone = {q: percentile(local["samples"]["ed25519"], v) * 1e6 for q, v in (("p50", 0.5), ("p99", 0.99))}
    first_p50 = percentile(local["samples"]["verify_access"], 0.5) * 1e6
    local_p50 = percentile(local["samples"]["local"], 0.5) * 1e6
    out["authn_local_verify_p50_us"] = {
        "label": "local verification p50", "unit": "us", "value": round(local_p50, 2), "group": GROUP,
        "baseline": {"name": "first check (verify_access)", "value": round(first_p50, 2)},
        "ratio": ratio_of(local_p50, first_p50), "target": {"bound": "max_abs", "value": LOCAL_TARGET_US},
        "met": local_p50 <= LOCAL_TARGET_US, "informational": False, "round_p50_us": local["round_p50_us"],
        "detail": f"{local['calls']:,} calls of LocalVerifier.verify on a token presented again, PublicKeys from "
                  f"authn.keys ({local['keys']} key), {local['token_bytes']}-byte token",
        "note": "shared.tokens.LocalVerifier(client, 'authn').verify(token, audience, presenter) in the bench "
                "process: revocation view checked, issuer, audience, times and presenter checked every call; "
                "the signature and parsing are the first check's"}
    out["authn_local_verify_p99_us"] = {
        "label": "local verification p99", "unit": "us",
        "value": round(percentile(local["samples"]["local"], 0.99) * 1e6, 2), **info, "baseline": None,
        "ratio": None, "detail": ""}
    out["authn_first_verify_p50_us"] = {
        "label": "first check of a token p50", "unit": "us", "value": round(first_p50, 2), **info,
        "baseline": {"name": "Ed25519 verify", "value": round(alone["p50"], 2)},
        "ratio": ratio_of(first_p50, alone["p50"]),
        "detail": f"verify_access without a cache; the signature check alone is {alone['p50'] / first_p50:.0%}"}
    passkey = raw["passkey"]["samples"]
    password_p50 = percentile(raw["login"]["samples"]["login"], 0.5) * 1e3
    for q, v in (("p50", 0.5), ("p99", 0.99)):
        value = percentile(passkey, v) * 1e3
        out[f"authn_passkey_login_{q}_ms"] = {
            "label": f"passkey login {q}", "unit": "ms", "value": round(value, 2), **info,
            "baseline": {"name": "password login p50", "value": round(password_p50, 2)} if q == "p50" else None,
            "ratio": ratio_of(value, password_p50) if q == "p50" else None,
            "detail": f"{len(passkey):,} logins: login.passkey.begin + a P-256 assertion + login.passkey.finish"}
    return out


def _target_text(fig: dict[str, Any]) -> str:
    target = fig["target"]
    if not target:
        return "info only"
    if target["bound"] == "max_abs":
        return f"<={target['value']:g} {fig['unit']}"
    return f"<={target['ratio']:g}x"


def table(figs: dict[str, dict[str, Any]]) -> str:
    """The authn section of the bench's table."""
    return rows(figs, "authn", [
        "authn: password login beside one Argon2id verify in process (informational); authn.verify over the",
        "mesh beside authn.health (same client, same rounds); LocalVerifier and a first check in the bench",
        "process; passkey logins with a software authenticator."])


def rows(figs: dict[str, dict[str, Any]], group: str, intro: list[str]) -> str:
    """A section of the bench's table: ``intro``, then a row per figure (value, baseline, ratio,
    target, met, detail). Shared by the sections whose figures have this shape (authn, authz)."""
    head = (f"{group + ' figure':<40}{'value':>10}  {'unit':<7}{'baseline':>10}  {'(of)':<16}{'ratio':>7}  "
            f"{'target':<10}{'met':<4} detail")
    lines = [*intro, head, "-" * 140]
    for fig in figs.values():
        if fig["value"] is None:
            value = "-"
        else:
            value = f"{fig['value']:,.0f}" if fig["unit"] in ("call/s",) or fig["value"] >= 1000 \
                else f"{fig['value']:,.1f}"
        base = fig.get("baseline")
        base_text = f"{base['value']:>10,.1f}  {base['name']:<16}" if base else f"{'':>10}  {'':<16}"
        ratio_text = f"{fig['ratio']:>6.2f}x" if fig.get("ratio") is not None else f"{'':>7}"
        met = "" if fig["met"] is None else ("yes" if fig["met"] else "NO")
        lines.append(f"{fig['label']:<40}{value:>10}  {fig['unit']:<7}{base_text}{ratio_text}  "
                     f"{_target_text(fig):<10}{met:<4} {fig['detail']}")
    return "\n".join(lines)

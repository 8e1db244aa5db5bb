"""The mesh's verdict from the states of its processes: one word, its exit code, and the reasons.

Each process has a readiness (``shared.Readiness``: ``ready``, ``sealed``, ``degraded``, ``failed``)
as its ``health`` reports it, or ``down`` when it is not running, not registered or not answering.
The verdict, in order of precedence:

- ``unhealthy`` (exit 1): supervisord or the broker is down, or any process is down or failed, or a
  process is sealed while keyvault is not (it waits on something that should have let it in);
- ``sealed`` (exit 3): keyvault is sealed, and every other process is ready or sealed with it: the
  operator's choice (``meshctl security lock``) or a start without the master key, not a fault;
- ``degraded`` (exit 4): every process serves, but one says part of its job is lost or refused;
- ``healthy`` (exit 0): every process is ready.

Exit 2 stays meshctl's usage error. This module is pure: no I/O, so ``status``, ``up``,
``restart`` and ``ping`` (:func:`of_process`) judge the same way, and the tests can judge made-up
rows. README.md's "Verdicts and exit codes" table is the one place these are documented for people.
"""

from __future__ import annotations

from typing import Any, Final

HEALTHY: Final = "healthy"
SEALED: Final = "sealed"
DEGRADED: Final = "degraded"
UNHEALTHY: Final = "unhealthy"
#: ``meshctl status``, ``up``, ``restart`` and ``ping`` exit with these (README: "Verdicts and exit codes").
EXIT_CODES: Final = {HEALTHY: 0, UNHEALTHY: 1, SEALED: 3, DEGRADED: 4}
DOWN: Final = "down"
_KNOWN: Final = ("ready", "sealed", "degraded", "failed")


def readiness(name: str, supervisor_state: str, registered: bool, health: Any) -> dict[str, Any]:
    """A process's readiness for the status row: its health's ``{state, reason, dependency}``, or
    ``down`` with the reason when it cannot answer for itself."""
    if supervisor_state != "RUNNING":
        return {"state": DOWN, "reason": supervisor_state, "dependency": None}
    if not registered:
        return {"state": DOWN, "reason": "not registered with the broker", "dependency": None}
    if not isinstance(health, dict) or "state" not in health:
        error = health.get("error") if isinstance(health, dict) else None
        return {"state": DOWN, "reason": "does not answer health" + (f" ({error})" if error else ""),
                "dependency": None}
    state = health["state"]
    if state not in _KNOWN:
        return {"state": "failed", "reason": f"health reports an unknown state {state!r}", "dependency": None}
    return {"state": state, "reason": health.get("reason"), "dependency": health.get("dependency")}


def of_process(health: Any) -> tuple[str, int]:
    """The verdict word and exit code for one process from its ``health`` reply (``meshctl ping``):
    ``ready`` is healthy, ``sealed`` sealed, ``degraded`` degraded; ``failed``, an unknown state or
    a reply that is not a health report is unhealthy. Unlike :func:`judge`, a sealed process is not
    weighed against keyvault: ping asks one process, and it answers for itself."""
    state = health.get("state") if isinstance(health, dict) else None
    verdict = {"ready": HEALTHY, "sealed": SEALED, "degraded": DEGRADED}.get(str(state), UNHEALTHY)
    return verdict, EXIT_CODES[verdict]


def describe(ready: dict[str, Any]) -> str:
    """``state: reason (waits on dependency)`` in one line; a process that is down is described by why
    (``FATAL (...)``, ``not registered with the broker``)."""
    if ready["state"] == DOWN:
        return str(ready["reason"])
    text = ready["state"] + (f": {ready['reason']}" if ready.get("reason") else "")
    return text + (f" (waits on {ready['dependency']})" if ready.get("dependency") else "")


def judge(rows: list[dict[str, Any]], outage: list[str]) -> dict[str, Any]:
    """``{state, exit_code, verdict, problems, sealed, degraded}`` for ``rows`` (each with ``name`` and
    ``ready``, from :func:`readiness`). ``outage`` lists reasons that make the whole mesh unhealthy
    whatever the rows say (supervisord or the broker unreachable)."""
    by_name = {r["name"]: r["ready"] for r in rows}
    vault_sealed = by_name.get("keyvault", {}).get("state") == SEALED
    problems = list(outage)
    sealed, degraded = [], []
    for row in rows:
        ready, name = row["ready"], row["name"]
        if ready["state"] in (DOWN, "failed"):
            problems.append(f"{name}: {describe(ready)}")
        elif ready["state"] == SEALED:
            if vault_sealed:
                sealed.append(name)
            else:
                problems.append(f"{name}: {describe(ready)}, although keyvault is unsealed")
        elif ready["state"] == DEGRADED:
            degraded.append(f"{name}: {describe(ready)}")
    if problems:
        state, verdict = UNHEALTHY, "unhealthy: " + "; ".join(problems)
    elif sealed:
        waiting = [name for name in sealed if name != "keyvault"]
        state, verdict = SEALED, "sealed: run `meshctl security unlock`" + (
            f"; {', '.join(waiting)} {'waits' if len(waiting) == 1 else 'wait'} for it" if waiting else "")
    elif degraded:
        state, verdict = DEGRADED, "degraded: " + "; ".join(degraded)
    else:
        state, verdict = HEALTHY, HEALTHY
    return {"state": state, "exit_code": EXIT_CODES[state], "verdict": verdict, "problems": problems,
            "sealed": sealed, "degraded": degraded}

"""What ``meshctl plugins`` prints for people: pure functions of plugin-host's and authz's replies, in
their documented shapes (the wire is plugin-host's ``plugins.*`` handlers; ``--json`` prints the
replies themselves).

A plugin is third-party code: what it wrote (its log lines, the error of a call, the detail of its
exit) and what its publisher wrote (its description) reach the operator's terminal only with control
and bidirectional-override characters shown as escapes (:func:`clean`), so that no plugin can move
the cursor, recolour or rewrite what meshctl shows, or hide text in it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from ._audit import when
from ._output import table

_USERDATA: Final = "userdata"
#: C0 and C1 controls (escape sequences start with one) and the bidirectional overrides and isolates.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def clean(text: Any) -> str:
    """``text`` with each control or bidi character written as an escape (``\\x1b``, ``\\u202e``)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", str(text))


def _words(items: list[str]) -> str:
    """``read``, ``read and write``, ``notes, calendar and health``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _listed(items: list[str] | None) -> str:
    return ", ".join(items) if items else "none"


def preview(p: dict[str, Any]) -> str:
    """What ``plugins.inspect`` says a package is, for the person who approves it."""
    installed = p.get("installed_version")
    upgrade = ("" if installed is None else f" (reinstall of {installed})" if installed == p["version"]
               else f" (upgrade from {installed})")
    lines = [f"{p['name']} {p['version']}{upgrade}",
             f"  publisher     {p['publisher']} (key fingerprint {p['publisher_fingerprint']})",
             f"  content       {p['content_hash']}"]
    if p.get("description"):
        lines.append(f"  description   {clean(p['description'])}")
    capabilities = p.get("capabilities") or []
    lines.append("  capabilities  " + ("none: it asks for nothing beyond its sandbox" if not capabilities
                                       else "it asks to:"))
    lines += [f"    - {c['words']} [{c['grant']}]" for c in capabilities]
    quotas = p.get("quotas") or []
    if quotas:
        lines.append("  quotas")
        lines += [f"    - {q}" for q in quotas]
    lines.append(f"  sandbox       requires {_listed(p.get('requires'))}")
    if p.get("missing_layers"):
        lines.append(f"                missing on this machine: {_listed(p['missing_layers'])}")
    problems = p.get("problems") or []
    if problems:
        lines.append("  problems      install refuses it:")
        lines += [f"    - {problem}" for problem in problems]
    return "\n".join(lines)


def question(p: dict[str, Any]) -> str:
    upgrade = f" (replacing {p['installed_version']})" if p.get("installed_version") is not None else ""
    what = "with these capabilities" if p.get("capabilities") else "(it requests no capabilities)"
    return f"install {p['name']} {p['version']}{upgrade} {what}"


def installed_text(view: dict[str, Any]) -> str:
    name = view["name"]
    if view.get("enabled"):
        state = view.get("state") or "enabled"
        line = f"installed {name} {view['version']} from {view['publisher']}: {state}"
    else:
        line = (f"installed {name} {view['version']} from {view['publisher']}: disabled (meshctl plugins enable "
                f"{name} starts it)")
    if any(_userdata(c["grant"]) for c in view.get("capabilities") or []):
        line += (f"\nits access to people's data needs each person's consent: meshctl plugins show {name} says "
                 "which")
    return line


def _state(p: dict[str, Any]) -> str:
    return str(p.get("state") or ("enabled" if p.get("enabled") else "disabled"))


def listing(reply: dict[str, Any]) -> str:
    """``plugins list``: a table of the plugins, then which sandbox layers this machine applies."""
    plugins = reply.get("plugins") or []
    if plugins:
        rows = [[p["name"], p["version"], p["publisher"], _state(p), p.get("failures")] for p in plugins]
        lines = [table(["NAME", "VERSION", "PUBLISHER", "STATE", "FAILURES"], rows, states=[3])]
    else:
        lines = ["no plugins installed (meshctl plugins install PATH installs one)"]
    layers = reply.get("layers") or {}
    available = [name for name, layer in layers.items() if layer.get("available")]
    lines.append(f"sandbox layers: {', '.join(available)} available" if available
                 else "sandbox layers: none available")
    lines += [f"layer {name} is not available here: {layer.get('reason') or 'no reason given'}; plugins that "
              "require it are refused" for name, layer in layers.items() if not layer.get("available")]
    return "\n".join(lines)


def _userdata(grant: str) -> tuple[str, str] | None:
    """``userdata:<category>:<action>`` as (category, action); None for any other grant."""
    kind, _, rest = grant.partition(":")
    category, _, action = rest.partition(":")
    if kind != _USERDATA or not category or not action or ":" in action:
        return None
    return category, action


def consent_of(view: dict[str, Any], grants: list[dict[str, Any]]) -> dict[str, Any]:
    """The live grants to ``plugin:NAME`` among ``grants`` (authz.consent.list), and each personal-data
    capability no live grant covers, with the command a person runs to consent to it."""
    name = view["name"]
    grantee = f"plugin:{name}"
    mine = [g for g in grants if g.get("grantee") == grantee and g.get("state", "active") == "active"]
    needs = []
    for capability in view.get("capabilities") or []:
        wanted = _userdata(capability["grant"])
        if wanted is None:
            continue
        category, action = wanted
        if any(category in g["categories"] and action in g["actions"] for g in mine):
            continue
        needs.append({"grant": capability["grant"], "words": capability.get("words") or capability["grant"],
                      "category": category, "action": action,
                      "command": f"meshctl consent grant {grantee} --user USER --category {category} "
                                 f"--action {action} --purpose {name}"})
    return {"grants": mine, "needs_consent": needs, "error": None}


def _grant_line(g: dict[str, Any], names: dict[str, str]) -> str:
    owner = names.get(g["owner"], g["owner"])
    return (f"{owner} lets it {_words(g['actions'])} {_words(g['categories'])} for purpose {g['purpose']} "
            f"until {when(g['expires_at'])}")


def _running(view: dict[str, Any]) -> str:
    if not view.get("enabled"):
        reason = str(view.get("disabled_reason") or "").removeprefix("disabled ")
        return f"disabled ({clean(reason)})" if reason else "disabled"
    state = _state(view)
    return f"{state} (pid {view['pid']})" if view.get("pid") is not None else state


def shown(view: dict[str, Any], consent: dict[str, Any], names: dict[str, str] | None = None) -> str:
    """``plugins show``: plugin-host's view of the plugin, then the consent people gave it (``consent``
    from :func:`consent_of`, or ``{"error": message}`` when authz could not say)."""
    names = names or {}
    lines = [f"{view['name']} {view['version']}",
             f"  publisher     {view['publisher']} (key fingerprint {view.get('publisher_fingerprint')})",
             f"  content       {view.get('content_hash')}"]
    if view.get("description"):
        lines.append(f"  description   {clean(view['description'])}")
    lines += [f"  installed     {when(view.get('installed_at'))} by {view.get('installed_by') or '-'}",
              f"  state         {_running(view)}"]
    if view.get("failures") or view.get("restart_at") is not None:
        restart = f", restarts at {when(view['restart_at'])}" if view.get("restart_at") is not None else ""
        lines.append(f"  failures      {view.get('failures') or 0}{restart}")
    last = view.get("last_exit")
    if last:
        detail = f": {clean(last['detail'])}" if last.get("detail") else ""
        lines.append(f"  last exit     {last.get('reason')}{detail} ({when(last.get('at'))})")
    if "functions" in view:
        lines.append(f"  functions     {_listed(view.get('functions'))}")
    if "capabilities" in view:
        capabilities = view.get("capabilities") or []
        lines.append("  capabilities  none" if not capabilities else "  capabilities")
        lines += [f"    - {c['words']} [{c['grant']}]" for c in capabilities]
    if view.get("quotas"):
        lines.append("  quotas")
        lines += [f"    - {q}" for q in view["quotas"]]
    if "requires" in view or view.get("layers_applied"):
        applied = view.get("layers_applied") or {}
        sandbox = f"requires {_listed(view.get('requires'))}"
        if applied:
            sandbox += f"; applied: {_listed([k for k, v in applied.items() if v])}"
            missing = [k for k, v in applied.items() if not v]
            if missing:
                sandbox += f"; not applied: {_listed(missing)}"
        lines.append(f"  sandbox       {sandbox}")
    for problem in view.get("events") or []:
        lines.append(f"  events        {clean(problem)}")
    if view.get("events_dropped"):
        lines.append(f"  events        {view['events_dropped']} dropped")
    lines.append(_consent_lines(view, consent, names))
    return "\n".join(lines)


def _consent_lines(view: dict[str, Any], consent: dict[str, Any], names: dict[str, str]) -> str:
    if consent.get("error") is not None:
        return f"  consent       unknown (authz: {consent['error']})"
    grants, needs = consent.get("grants") or [], consent.get("needs_consent") or []
    if not grants and not needs:
        # Without its capabilities (plugin-host could not read its manifest) nothing more is known.
        return ("  consent       no grants (it requests no one's personal data)" if "capabilities" in view
                else "  consent       no grants")
    lines = ["  consent"]
    lines += [f"    - {_grant_line(g, names)}" for g in grants]
    lines += [f"    - {n['grant']} needs the person's consent: {n['command']}" for n in needs]
    return "\n".join(lines)


def state_text(verb: str, view: dict[str, Any]) -> str:
    name = view["name"]
    if verb == "disable" or not view.get("enabled"):
        return (f"{name} {view['version']}: {_running(view)}; it stays installed and stopped until "
                f"`meshctl plugins enable {name}`")
    return f"{name} {view['version']}: {_running(view)}"


def log_lines(reply: dict[str, Any]) -> str:
    """``plugins logs``: TIME STREAM LINE, oldest first."""
    lines = reply.get("lines") or []
    if not lines:
        return f"no log lines for {reply.get('name')}"
    rows = [[when(entry["at"]), clean(entry["stream"]), clean(entry["line"])] for entry in lines]
    return table(["TIME", "STREAM", "LINE"], rows)


def call_error(error: Any) -> str:
    """A failed plugin call's error, in one line."""
    if isinstance(error, dict):
        message = error.get("message") or json.dumps(error, sort_keys=True, default=str)
        text = f"{error['code']}: {message}" if error.get("code") else str(message)
    else:
        text = str(error)
    return clean(" ".join(text.split())) or "the call failed"

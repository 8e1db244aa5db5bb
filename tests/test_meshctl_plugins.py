"""``meshctl plugins`` (issue 17) without a running plugin-host.

What runs without one is tested for real: the command line (usage errors, options an action does
not take), the refusals that come before the mesh is asked anything (install without ``--approve``
and without a terminal, remove without ``--yes``, bad JSON for ``call``), the publisher's side
(``keygen`` and ``sign``, which need no home and no mesh) and what is printed for each documented
reply shape (the renderers are pure functions). The flow of ``install``, ``show`` and ``call`` runs
against a stand-in for the mesh that answers with those shapes and records what was sent: the
content hash and grants approved are the ones shown, nothing is installed after a refusal or a
"no". Tests against a real plugin-host come with the service.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared import MeshClient, MeshError, MeshHome, Unavailable
from tools.meshctl_cli import _confirm, _plugins, main
from tools.meshctl_cli import _plugins_render as render
from tools.meshctl_cli._audit import when
from tools.meshctl_cli._peer import refused

from .test_meshctl_safety import one_line, run, snapshot

HASH = "sha256:" + "ab" * 32
NOW = 1_800_000_000.0

INSPECTED: dict[str, Any] = {
    "name": "weather", "version": "1.2.0", "publisher": "acme", "publisher_fingerprint": "4f2a9c0d1e2b3a4c",
    "content_hash": HASH, "description": "Forecasts for the places in your calendar", "entry": "plugin.py",
    "capabilities": [{"grant": "events:subscribe:calendar.",
                      "words": "receive events on topics starting with calendar."},
                     {"grant": "storage.kv:write:forecasts", "words": "write its own storage in category forecasts"},
                     {"grant": "userdata:calendar:read", "words": "read your calendar (needs your consent)"},
                     {"grant": "userdata:notes:write", "words": "write your notes (needs your consent)"}],
    "quotas": ["memory: up to 64 MiB", "processor time: up to 5 s in all",
               "each call: answered within 30 s or stopped"],
    "requires": ["landlock", "no_new_privs", "rlimits", "seccomp"], "missing_layers": [], "installed_version": "1.1.0",
    "problems": []}

VIEW: dict[str, Any] = {
    "name": "weather", "version": "1.2.0", "publisher": "acme", "publisher_fingerprint": "4f2a9c0d1e2b3a4c",
    "content_hash": HASH, "description": "Forecasts for the places in your calendar", "installed_at": NOW - 3600,
    "installed_by": "meshctl", "enabled": True, "state": "running", "pid": 4242, "functions": ["forecast", "today"],
    "capabilities": INSPECTED["capabilities"], "quotas": INSPECTED["quotas"], "requires": INSPECTED["requires"],
    "layers_applied": {"rlimits": True, "no_new_privs": True, "seccomp": True, "landlock": True}, "failures": 2,
    "restart_at": None, "last_exit": {"reason": "killed", "detail": "over its memory quota", "at": NOW - 60},
    "disabled_reason": None, "events": [], "events_dropped": 0}


def grant(owner: str, categories: list[str], actions: list[str], *, grantee: str = "plugin:weather",
          state: str = "active") -> dict[str, Any]:
    """A grant as authz.consent.list answers it."""
    return {"id": f"g-{owner}-{categories[0]}", "owner": owner, "grantee": grantee, "categories": categories,
            "actions": actions, "purpose": "weather", "granted_at": NOW - 86400, "expires_at": NOW + 86400 * 30,
            "granted_by": "s1", "revoked_at": None, "state": state}


# -- the command line, before any mesh --------------------------------------------------------------

@pytest.fixture
def no_mesh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command asks the mesh anything, and let no terminal answer."""
    def reached(*_: Any) -> Any:
        raise AssertionError("the mesh was asked")
    monkeypatch.setattr(_plugins, "with_mesh", reached)
    monkeypatch.setattr(_confirm, "on_terminal", lambda: False)


def usage_error(capsys: pytest.CaptureFixture[str], home: MeshHome, *argv: str) -> str:
    assert main(["--home", str(home.root), *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    return one_line(err)


@pytest.mark.usefixtures("no_mesh")
@pytest.mark.parametrize(("argv", "says"), [
    (("plugins", "install"), "plugins install needs a PATH"),
    (("plugins", "install", "PACKAGE"), "needs --approve to install it without a terminal to ask"),
    (("plugins", "install", "PACKAGE", "--enable"), "needs --approve to install it without a terminal to ask"),
    (("plugins", "install", "/no/such/package", "--approve"), "/no/such/package: no such plugin package"),
    (("plugins", "remove", "weather"), "plugins remove asks before it acts, and there is no terminal to ask: add "
                                       "--yes"),
    (("plugins", "call", "weather", "forecast", "{bad"), "JSON (the call's arguments) is not valid JSON"),
    (("plugins", "call", "weather", "forecast", "[1,"), "is not valid JSON"),
    (("plugins", "call", "weather"), "plugins call needs NAME FUNCTION [JSON]"),
    (("plugins", "show"), "plugins show needs the plugin's NAME"),
    (("plugins", "logs", "weather", "-n", "0"), "argument -n/--lines: '0' is not a whole number from 1 to 1000"),
    (("plugins", "logs", "weather", "-n", "1001"), "'1001' is not a whole number from 1 to 1000"),
    (("plugins", "keygen", "--id", "acme"), "plugins keygen needs KEYFILE"),
    (("plugins", "keygen", "acme.key"), "plugins keygen needs --id KEY_ID"),
    (("plugins", "sign", "PACKAGE", "--id", "acme"), "plugins sign needs --key KEYFILE"),
    (("plugins", "sign", "--key", "acme.key", "--id", "acme"), "plugins sign needs DIR"),
    (("plugins", "sign", "PACKAGE", "--key", "acme.key"), "plugins sign needs --id KEY_ID"),
    (("plugins", "sign", "/no/such/dir", "--key", "acme.key", "--id", "acme"), "not a package directory"),
    (("plugins", "sign", "PACKAGE", "--key", "/no/such.key", "--id", "acme"), "/no/such.key: no such key file"),
    (("plugins", "list", "--approve"), "--approve does not apply to plugins list (only to plugins install)"),
    (("plugins", "list", "weather"), "TARGET does not apply to plugins list"),
    (("plugins", "show", "weather", "--yes"), "--yes does not apply to plugins show (only to plugins remove)"),
    (("plugins", "install", "PACKAGE", "--id", "acme"), "--id does not apply to plugins install (only to plugins "
                                                          "keygen, plugins sign)"),
    (("plugins", "logs", "weather", "--enable"), "--enable does not apply to plugins logs"),
    (("plugins", "show", "weather", "forecast"), "FUNCTION does not apply to plugins show (only to plugins call)"),
    (("plugins", "upgrade", "weather"), "argument action: invalid choice: 'upgrade'"),
])
def test_usage_errors_and_refusals_come_before_the_mesh(fast_home: MeshHome, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
                                                        says: str) -> None:
    package = tmp_path / "weather"
    package.mkdir()
    line = usage_error(capsys, fast_home, *(str(package) if a == "PACKAGE" else a for a in argv))
    assert says in line, line


def test_install_without_approve_refuses_before_contacting_the_mesh(fast_home: MeshHome, tmp_path: Path) -> None:
    """Through the real CLI, no terminal, a home with no mesh: the refusal is exit 2 and changes nothing,
    where asking the mesh would have failed otherwise (exit 1, naming the missing mesh)."""
    package = tmp_path / "weather"
    package.mkdir()
    before = snapshot(fast_home.root)
    for json_flag in ((), ("--json",)):
        done = run(fast_home, "plugins", "install", str(package), *json_flag)
        line = one_line(done.stderr)
        assert done.returncode == 2, done.stderr
        assert line == ("meshctl: plugins install shows the capabilities a plugin requests and needs --approve to "
                        "install it without a terminal to ask: review it on a terminal, or add --approve")
        assert done.stdout == "" if not json_flag else json.loads(done.stdout)["error"]["code"] == "usage"
    assert snapshot(fast_home.root) == before
    # With --approve the same command goes on to the mesh, which is not there: a different failure.
    done = run(fast_home, "plugins", "install", str(package), "--approve")
    assert done.returncode == 1 and "meshctl init" in one_line(done.stderr)


def test_publisher_commands_need_no_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CURVEMESH_HOME", raising=False)
    existing = tmp_path / "acme.key"
    existing.write_bytes(b"someone's key")
    # Refused before any key is made, and before any home is looked for (there is none).
    assert main(["plugins", "keygen", str(existing), "--id", "acme"]) == 1
    assert "exists: a publisher key is never written over another file" in one_line(capsys.readouterr().err)
    assert existing.read_bytes() == b"someone's key"
    # Mesh commands do need a home.
    assert main(["plugins", "list"]) == 2
    assert "CURVEMESH_HOME" in capsys.readouterr().err


# -- what people read -------------------------------------------------------------------------------

def test_list_is_a_table_then_the_sandbox_layers() -> None:
    reply = {"layers": {"rlimits": {"available": True, "reason": None},
                        "no_new_privs": {"available": True, "reason": None},
                        "seccomp": {"available": True, "reason": None},
                        "landlock": {"available": False, "reason": "the kernel has no Landlock (ABI 0)"}},
             "plugins": [VIEW, {**VIEW, "name": "timer", "version": "0.3.1", "publisher": "me", "enabled": False,
                                "state": "stopped", "failures": 0}]}
    header, first, second, layers, landlock = render.listing(reply).splitlines()
    assert header.split() == ["NAME", "VERSION", "PUBLISHER", "STATE", "FAILURES"]
    assert first.split() == ["weather", "1.2.0", "acme", "running", "2"]
    assert second.split() == ["timer", "0.3.1", "me", "stopped", "0"]
    assert first.index("running") == header.index("STATE")
    assert layers == "sandbox layers: rlimits, no_new_privs, seccomp available"
    assert landlock == ("layer landlock is not available here: the kernel has no Landlock (ABI 0); plugins that "
                        "require it are refused")
    empty = render.listing({"layers": {"rlimits": {"available": True, "reason": None}}, "plugins": []})
    assert empty.splitlines() == ["no plugins installed (meshctl plugins install PATH installs one)",
                                  "sandbox layers: rlimits available"]
    # A plugin plugin-host has no runner for shows whether it is enabled.
    assert "disabled" in render.listing({"layers": {}, "plugins": [{**VIEW, "state": None, "enabled": False}]})


def test_show_names_grants_in_words_and_the_consent_still_needed() -> None:
    grants = [grant("u-alice", ["calendar"], ["read"]),
              grant("u-bob", ["calendar", "health"], ["read", "write"]),
              grant("u-carol", ["notes"], ["write"], state="revoked"),  # not live: covers nothing
              grant("u-alice", ["notes"], ["write"], grantee="plugin:other")]  # another plugin's
    consent = render.consent_of(VIEW, grants)
    assert [g["owner"] for g in consent["grants"]] == ["u-alice", "u-bob"]
    assert [n["grant"] for n in consent["needs_consent"]] == ["userdata:notes:write"]
    text = render.shown(VIEW, consent, {"u-alice": "alice"})
    until = when(NOW + 86400 * 30)
    assert f"    - alice lets it read calendar for purpose weather until {until}" in text.splitlines()
    assert f"    - u-bob lets it read and write calendar and health for purpose weather until {until}" in text
    assert ("    - userdata:notes:write needs the person's consent: meshctl consent grant plugin:weather --user USER "
            "--category notes --action write --purpose weather") in text.splitlines()
    lines = text.splitlines()
    assert lines[0] == "weather 1.2.0"
    assert "  state         running (pid 4242)" in lines
    assert "  failures      2" in lines
    assert f"  last exit     killed: over its memory quota ({when(NOW - 60)})" in lines
    assert "  functions     forecast, today" in lines
    assert "    - read your calendar (needs your consent) [userdata:calendar:read]" in lines
    assert "    - memory: up to 64 MiB" in lines
    assert ("  sandbox       requires landlock, no_new_privs, rlimits, seccomp; applied: rlimits, no_new_privs, "
            "seccomp, landlock") in lines
    # The exact command shown is one `meshctl consent grant` takes.
    from tools.meshctl_cli import _parser

    command = consent["needs_consent"][0]["command"].split()[1:]
    parsed = _parser.build("consent").parse_args([w.replace("USER", "alice") for w in command])
    assert (parsed.target, parsed.categories, parsed.actions, parsed.purpose) == (
        "plugin:weather", ["notes"], ["write"], "weather")


def test_show_of_a_stopped_plugin_without_consent_and_with_authz_away() -> None:
    stopped = {**VIEW, "enabled": False, "state": "stopped", "pid": None, "disabled_reason": "disabled by an operator",
               "failures": 3, "restart_at": NOW + 30, "events": ["calendar.: \x1b[2Jnot allowed"],
               "events_dropped": 5, "layers_applied": {"rlimits": True, "landlock": False}}
    text = render.shown(stopped, {"grants": None, "needs_consent": None, "error": "authz is not registered"})
    lines = text.splitlines()
    assert "  state         disabled (by an operator)" in lines
    assert f"  failures      3, restarts at {when(NOW + 30)}" in lines
    assert "  events        calendar.: \\x1b[2Jnot allowed" in lines and "\x1b" not in text
    assert "  events        5 dropped" in lines
    assert "; applied: rlimits; not applied: landlock" in text
    assert lines[-1] == "  consent       unknown (authz: authz is not registered)"
    no_data = {**VIEW, "capabilities": INSPECTED["capabilities"][:2]}  # its own storage and events only
    assert render.shown(no_data, render.consent_of(no_data, [])).splitlines()[-1] == (
        "  consent       no grants (it requests no one's personal data)")
    assert render.state_text("disable", stopped) == ("weather 1.2.0: disabled (by an operator); it stays installed "
                                                     "and stopped until `meshctl plugins enable weather`")
    assert render.state_text("enable", VIEW) == "weather 1.2.0: running (pid 4242)"


def test_logs_are_time_stream_line_with_control_characters_escaped() -> None:
    reply = {"name": "weather", "lines": [
        {"at": NOW, "stream": "host", "line": "started (pid 4242)"},
        {"at": NOW + 1, "stream": "stderr", "line": "\x1b]0;owned\x07 warning \u202eevil"},
        {"at": NOW + 2, "stream": "stdout", "line": "fine"}]}
    header, first, second, third = render.log_lines(reply).splitlines()
    assert header.split() == ["TIME", "STREAM", "LINE"]
    assert first == f"{when(NOW)}  host    started (pid 4242)"
    assert second == f"{when(NOW + 1)}  stderr  \\x1b]0;owned\\x07 warning \\u202eevil"
    assert third.endswith("stdout  fine")
    assert render.log_lines({"name": "weather", "lines": []}) == "no log lines for weather"


def test_the_install_preview_says_what_it_is_and_what_refuses_it() -> None:
    refused_one = {**INSPECTED, "installed_version": "1.3.0", "missing_layers": ["landlock"],
                   "problems": ["requires the sandbox layer landlock, which this machine cannot apply (no Landlock); "
                                "it is not run weaker",
                                "version 1.2.0 is older than 1.3.0, installed before (rollback protection; publish a "
                                "newer version)"]}
    lines = render.preview(refused_one).splitlines()
    assert lines[:4] == ["weather 1.2.0 (upgrade from 1.3.0)",
                         "  publisher     acme (key fingerprint 4f2a9c0d1e2b3a4c)",
                         f"  content       {HASH}",
                         "  description   Forecasts for the places in your calendar"]
    assert "    - read your calendar (needs your consent) [userdata:calendar:read]" in lines
    assert "    - receive events on topics starting with calendar. [events:subscribe:calendar.]" in lines
    assert "    - each call: answered within 30 s or stopped" in lines
    assert "  sandbox       requires landlock, no_new_privs, rlimits, seccomp" in lines
    assert "                missing on this machine: landlock" in lines
    assert lines[-3] == "  problems      install refuses it:"
    assert lines[-1].startswith("    - version 1.2.0 is older than 1.3.0")
    fresh = render.preview({**INSPECTED, "installed_version": None, "capabilities": [], "quotas": []})
    assert fresh.splitlines()[0] == "weather 1.2.0"
    assert "  capabilities  none: it asks for nothing beyond its sandbox" in fresh.splitlines()
    assert "problems" not in fresh and "quotas" not in fresh
    assert render.question(INSPECTED) == "install weather 1.2.0 (replacing 1.1.0) with these capabilities"


@pytest.mark.parametrize(("error", "says"), [
    ({"code": "TIMEOUT", "message": "forecast took longer than 30 s"}, "TIMEOUT: forecast took longer than 30 s"),
    ("no such function 'nope'\n(forecast, today)", "no such function 'nope' (forecast, today)"),
    ({"message": "bad \x1b[31mcity"}, "bad \\x1b[31mcity"),
    (None, "None"),
])
def test_a_failed_call_is_one_clean_line(error: Any, says: str) -> None:
    assert render.call_error(error) == says


# -- the flows, against a stand-in for the mesh -----------------------------------------------------

class FakeMesh:
    """Answers ``method`` with ``replies[method]`` (a value, a function of the body, or a MeshError to
    raise) and records each call."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.calls: list[tuple[str, Any]] = []

    async def call(self, method: str, body: Any = None, timeout: float | None = None) -> Any:
        self.calls.append((method, body))
        reply = self.replies[method]
        if isinstance(reply, MeshError):
            raise reply
        return reply(body) if callable(reply) else reply

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]


@pytest.fixture
def mesh(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], FakeMesh]:
    def make(replies: dict[str, Any]) -> FakeMesh:
        fake = FakeMesh(replies)

        def with_mesh(home: MeshHome, steps: Callable[[MeshClient], Any]) -> Any:
            try:
                return asyncio.run(steps(fake))  # type: ignore[arg-type]
            except MeshError as exc:
                raise refused(exc) from None  # what the real with_mesh makes of a refusal
        monkeypatch.setattr(_plugins, "with_mesh", with_mesh)
        return fake
    return make


def terminal(monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    monkeypatch.setattr(_confirm, "on_terminal", lambda: True)
    monkeypatch.setattr("sys.stdin", io.StringIO(answer))


def test_install_sends_the_hash_and_grants_it_showed(fast_home: MeshHome, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     mesh: Callable[[dict[str, Any]], FakeMesh],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "weather").mkdir()
    monkeypatch.chdir(tmp_path)
    fake = mesh({"plugin-host.plugins.inspect": INSPECTED, "plugin-host.plugins.install": VIEW})
    monkeypatch.setattr(_confirm, "on_terminal", lambda: False)
    assert main(["--home", str(fast_home.root), "plugins", "install", "weather", "--approve", "--enable"]) == 0
    out = capsys.readouterr().out
    assert fake.calls == [
        ("plugin-host.plugins.inspect", {"path": str(tmp_path / "weather")}),  # absolute: plugin-host's cwd differs
        ("plugin-host.plugins.install", {"path": str(tmp_path / "weather"), "approve_hash": HASH,
                                         "approve_capabilities": ["events:subscribe:calendar.",
                                                                  "storage.kv:write:forecasts",
                                                                  "userdata:calendar:read", "userdata:notes:write"],
                                         "enable": True})]
    assert out.startswith("weather 1.2.0 (upgrade from 1.1.0)\n")
    assert "installed weather 1.2.0 from acme: running" in out
    assert "needs each person's consent: meshctl plugins show weather says which" in out
    # --json: the install reply alone on stdout.
    fake.calls.clear()
    assert main(["--home", str(fast_home.root), "--json", "plugins", "install", "weather", "--approve"]) == 0
    assert json.loads(capsys.readouterr().out) == VIEW and fake.calls[1][1]["enable"] is False


@pytest.mark.parametrize("answer", ["n\n", "\n", "yess\n", ""])
def test_install_on_a_terminal_installs_only_after_yes(fast_home: MeshHome, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       mesh: Callable[[dict[str, Any]], FakeMesh],
                                                       capsys: pytest.CaptureFixture[str], answer: str) -> None:
    (tmp_path / "weather").mkdir()
    fake = mesh({"plugin-host.plugins.inspect": INSPECTED, "plugin-host.plugins.install": VIEW})
    terminal(monkeypatch, answer)
    assert main(["--home", str(fast_home.root), "plugins", "install", str(tmp_path / "weather")]) == 1
    out, err = capsys.readouterr()
    assert "install weather 1.2.0 (replacing 1.1.0) with these capabilities? [y/N]" in err
    assert "meshctl: aborted: nothing changed" in err and "userdata:notes:write" in out
    assert fake.methods() == ["plugin-host.plugins.inspect"]
    terminal(monkeypatch, "YES\n")
    assert main(["--home", str(fast_home.root), "plugins", "install", str(tmp_path / "weather")]) == 0
    assert fake.methods()[-1] == "plugin-host.plugins.install"


def test_install_with_problems_shows_them_and_never_asks(fast_home: MeshHome, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         mesh: Callable[[dict[str, Any]], FakeMesh],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "weather").mkdir()
    problems = ["quotas.memory_mb = 4096 exceeds [plugins] max_memory_mb = 512",
                "requires the sandbox layer landlock, which this machine cannot apply (no Landlock); it is not run "
                "weaker"]
    fake = mesh({"plugin-host.plugins.inspect": {**INSPECTED, "problems": problems}})
    terminal(monkeypatch, "y\n")  # a "yes" waiting on the terminal is never read
    assert main(["--home", str(fast_home.root), "plugins", "install", str(tmp_path / "weather")]) == 1
    out, err = capsys.readouterr()
    assert "[y/N]" not in err and all(f"    - {p}" in out.splitlines() for p in problems)
    assert one_line(err) == ("meshctl: weather 1.2.0 cannot be installed: quotas.memory_mb = 4096 exceeds [plugins] "
                             "max_memory_mb = 512 (and 1 more problem(s))")
    assert fake.methods() == ["plugin-host.plugins.inspect"]
    # --json: the inspection (with its problems) is the one document on stdout.
    assert main(["--home", str(fast_home.root), "--json", "plugins", "install", str(tmp_path / "weather"),
                 "--approve"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"] == problems


def test_a_refusal_from_plugin_host_is_one_line(fast_home: MeshHome, tmp_path: Path,
                                                mesh: Callable[[dict[str, Any]], FakeMesh],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from shared import BadRequest, NotFound

    (tmp_path / "weather").mkdir()
    mesh({"plugin-host.plugins.inspect": BadRequest("signature: not signed by a publisher in [plugins.publishers]"),
          "plugin-host.plugins.show": NotFound("no plugin 'nope' is installed (meshctl plugins list)")})
    home = ["--home", str(fast_home.root)]
    assert main([*home, "plugins", "install", str(tmp_path / "weather"), "--approve"]) == 1
    assert one_line(capsys.readouterr().err) == ("meshctl: BAD_REQUEST: signature: not signed by a publisher in "
                                                 "[plugins.publishers]")
    assert main([*home, "--json", "plugins", "show", "nope"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_found"


def test_show_asks_authz_for_the_grants_and_shows_the_plugin_without_it(
        fast_home: MeshHome, mesh: Callable[[dict[str, Any]], FakeMesh],
        capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(fast_home.root)]
    fake = mesh({"plugin-host.plugins.show": VIEW, "authz.consent.list": [grant("u-alice", ["calendar"], ["read"])],
                 "authn.users.list": [{"id": "u-alice", "username": "alice"}]})
    assert main([*home, "plugins", "show", "weather"]) == 0
    out = capsys.readouterr().out
    assert "    - alice lets it read calendar for purpose weather until" in out
    assert "--category notes --action write --purpose weather" in out
    assert fake.calls[:2] == [("plugin-host.plugins.show", {"name": "weather"}),
                              ("authz.consent.list", {"all": False})]
    assert main([*home, "--json", "plugins", "show", "weather"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["consent"]["error"] is None and shown["consent"]["grants"][0]["owner"] == "u-alice"
    assert [n["grant"] for n in shown["consent"]["needs_consent"]] == ["userdata:notes:write"]
    mesh({"plugin-host.plugins.show": VIEW, "authz.consent.list": Unavailable("authz is not registered")})
    assert main([*home, "plugins", "show", "weather"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "  consent       unknown (authz: authz is not registered)"


def test_call_prints_the_value_as_json_and_fails_with_the_error(fast_home: MeshHome,
                                                                mesh: Callable[[dict[str, Any]], FakeMesh],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    home = ["--home", str(fast_home.root)]
    fake = mesh({"plugin-host.call": {"ok": True, "value": {"city": "Lyon", "high_c": 21}}})
    assert main([*home, "plugins", "call", "weather", "forecast", '{"city": "Lyon"}']) == 0
    assert json.loads(capsys.readouterr().out) == {"city": "Lyon", "high_c": 21}
    assert fake.calls == [("plugin-host.call", {"plugin": "weather", "function": "forecast",
                                                "args": {"city": "Lyon"}})]
    assert main([*home, "plugins", "call", "weather", "today"]) == 0
    assert fake.calls[-1][1]["args"] is None
    capsys.readouterr()
    mesh({"plugin-host.call": {"ok": False, "error": {"code": "TIMEOUT", "message": "forecast took 30 s"}}})
    assert main([*home, "plugins", "call", "weather", "forecast", "[]"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and one_line(err) == "meshctl: weather.forecast failed: TIMEOUT: forecast took 30 s"


def test_remove_with_yes_names_what_it_removed(fast_home: MeshHome, mesh: Callable[[dict[str, Any]], FakeMesh],
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    fake = mesh({"plugin-host.plugins.show": VIEW,
                 "plugin-host.plugins.remove": {"removed": True, "name": "weather", "version": "1.2.0"}})
    terminal(monkeypatch, "n\n")
    assert main(["--home", str(fast_home.root), "plugins", "remove", "weather"]) == 1
    err = capsys.readouterr().err
    assert ("remove plugin weather 1.2.0: it stops, its package and logs are deleted; its data in storage stays, and "
            "an older version can never be installed again? [y/N]") in err
    assert fake.methods() == ["plugin-host.plugins.show"]
    assert main(["--home", str(fast_home.root), "plugins", "remove", "weather", "-y"]) == 0
    assert capsys.readouterr().out == "removed weather 1.2.0: its data in storage stays\n"
    assert fake.calls[-1] == ("plugin-host.plugins.remove", {"name": "weather"})


def test_logs_enable_disable_and_list_call_their_methods(fast_home: MeshHome,
                                                         mesh: Callable[[dict[str, Any]], FakeMesh],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    stopped = {**VIEW, "enabled": False, "state": "stopped", "pid": None, "disabled_reason": "disabled by an operator"}
    fake = mesh({"plugin-host.plugins.logs": {"name": "weather", "lines": []},
                 "plugin-host.plugins.enable": VIEW, "plugin-host.plugins.disable": stopped,
                 "plugin-host.plugins.list": {"layers": {}, "plugins": []}})
    home = ["--home", str(fast_home.root)]
    for argv in (["logs", "weather", "-n", "7"], ["enable", "weather"], ["disable", "weather"], ["list"]):
        assert main([*home, "plugins", *argv]) == 0
    assert fake.calls == [("plugin-host.plugins.logs", {"name": "weather", "limit": 7}),
                          ("plugin-host.plugins.enable", {"name": "weather"}),
                          ("plugin-host.plugins.disable", {"name": "weather"}),
                          ("plugin-host.plugins.list", None)]
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["no log lines for weather", "weather 1.2.0: running (pid 4242)",
                       "weather 1.2.0: disabled (by an operator); it stays installed and stopped until `meshctl "
                       "plugins enable weather`"]


# -- the publisher's side, for real -----------------------------------------------------------------

#: A minimal package in shared.plugins' format (the publisher must be the key id that signs it).
PLUGIN_TOML = """\
name = "hello"
version = "0.1.0"
publisher = "acme"
entry = "plugin"
description = "Says hello"
capabilities = ["userdata:notes:read"]

[quotas]
memory_mb = 64
"""


def test_a_publisher_makes_a_key_and_signs_a_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from shared import plugins

    monkeypatch.delenv("CURVEMESH_HOME", raising=False)  # a publisher's machine has no mesh home
    key = tmp_path / "acme.key"
    assert main(["plugins", "keygen", str(key), "--id", "acme"]) == 0
    out = capsys.readouterr().out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    entry = out[out.index("[plugins.publishers]"):]
    publishers = tomllib.loads(entry)["plugins"]["publishers"]
    assert list(publishers) == ["acme"] and publishers["acme"].startswith("ed25519:")
    assert main(["plugins", "keygen", str(key), "--id", "acme"]) == 1  # never over an existing key
    assert "exists: a publisher key is never written over another file" in one_line(capsys.readouterr().err)
    assert main(["plugins", "keygen", str(tmp_path / "bad.key"), "--id", "Acme!"]) == 2
    assert "--id 'Acme!' is not a publisher key id" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "bad.key").exists()
    # A key id with a dot is quoted in the TOML line, which then reads back as that one key.
    assert main(["--json", "plugins", "keygen", str(tmp_path / "team.key"), "--id", "acme.team"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert tomllib.loads(made["mesh_toml"])["plugins"]["publishers"] == {"acme.team": made["public_key"]}

    package = tmp_path / "hello"
    package.mkdir()
    (package / "plugin.toml").write_text(PLUGIN_TOML, "utf-8")
    (package / "plugin.py").write_text("def hello(args):\n    return 'hello'\n", "utf-8")
    assert main(["plugins", "sign", str(package), "--key", str(key), "--id", "acme"]) == 0
    line = capsys.readouterr().out.strip()
    prefix = f"signed {package} as acme: "
    assert line.startswith(prefix + "sha256:"), line
    content_hash = line.removeprefix(prefix)
    # What was printed is what a mesh that lists the printed key verifies.
    verified = plugins.verify_package(package, publishers)
    assert verified.content_hash == content_hash and verified.manifest.name == "hello"
    assert main(["--json", "plugins", "sign", str(package), "--key", str(key), "--id", "acme"]) == 0
    assert json.loads(capsys.readouterr().out)["content_hash"] == content_hash  # the same content, the same hash
    # Refusals are one line, exit 1: the manifest names another publisher; a key file others can read.
    assert main(["plugins", "sign", str(package), "--key", str(tmp_path / "team.key"), "--id", "acme.team"]) == 1
    assert "publisher is 'acme', not 'acme.team'" in one_line(capsys.readouterr().err)
    key.chmod(0o644)
    assert main(["--json", "plugins", "sign", str(package), "--key", str(key), "--id", "acme"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert "accessible by group or others" in error["message"] and error["code"] == "certificate"


def test_plugins_keygen_through_the_real_cli_needs_no_home(tmp_path: Path) -> None:
    """No --home and no CURVEMESH_HOME: the publisher commands run before a home is looked for."""
    from .test_operations_e2e import MESHCTL, REPO

    env = {k: v for k, v in os.environ.items() if k not in ("CURVEMESH_HOME", "CURVEMESH_CONFIG")}
    existing = tmp_path / "taken.key"
    existing.write_text("x")
    done = subprocess.run([*MESHCTL, "plugins", "keygen", str(existing), "--id", "acme"], cwd=REPO, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert done.returncode == 1 and "exists: a publisher key is never written" in one_line(done.stderr)
    assert existing.read_text() == "x"

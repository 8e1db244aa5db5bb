"""meshctl without a running mesh: init, its refusals, one-line errors, and supervisord.conf itself."""

from __future__ import annotations

import configparser
import json
import os
import signal
import socket
import stat
import sys

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import EventListenerPoolConfig, ServerOptions

from shared import DEFAULT_CONFIG_PATH, MeshHome, certs, load_config
from shared.provision import provision
from tools.meshctl_cli import main
from tools.meshctl_cli._programs import write_programs
from tools.meshctl_cli._supervisor import CONF, REPO, Credentials, create_credentials, load_credentials

from .mesh import PROJECT_IDENTITIES

PROJECT = load_config(DEFAULT_CONFIG_PATH)
MESH_PROGRAMS = ["broker", "keyvault", "audit", "storage", "authn", "authz", "pairing", "plugin-host"]


@pytest.fixture
def home(fast_home: MeshHome) -> MeshHome:
    return fast_home


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("meshctl: ")
    return lines[0]


def test_init_creates_every_key_and_the_credentials(home: MeshHome, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--home", str(home.root), "init", "--json")
    assert status == 0
    result = json.loads(out)
    names = {i["name"] for i in result["identities"]}
    assert names == {"broker", *PROJECT_IDENTITIES}
    assert "supervisor-events" in names and "meshctl" in names
    for name in names:
        assert stat.S_IMODE(os.stat(home.secret_key_path(name)).st_mode) == 0o600
    for name, role in PROJECT_IDENTITIES.items():
        cert = certs.load_certificate(home.certs / "allowed" / f"{name}.key")
        assert (cert.name, cert.role) == (name, role)
    assert stat.S_IMODE(os.stat(home.keys / "supervisord.credentials").st_mode) == 0o600
    assert "password" not in out and load_credentials(home).password not in out
    for directory in (home.root, home.keys, home.run, home.log):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700


def test_init_refuses_an_initialised_home_unless_forced(home: MeshHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--home", str(home.root), "init")[0] == 0
    broker_key = certs.load_certificate(home.public_key_path("broker")).public_key
    status, _, err = run(capsys, "--home", str(home.root), "init")
    assert status == 1 and "already initialised" in one_line(err) and "--force" in err
    assert certs.load_certificate(home.public_key_path("broker")).public_key == broker_key
    status, out, _ = run(capsys, "--home", str(home.root), "init", "--if-needed")
    assert status == 0 and "already initialised" in out
    status, out, _ = run(capsys, "--home", str(home.root), "init", "--force", "--yes")
    assert status == 0 and "replaced" in out
    assert certs.load_certificate(home.public_key_path("broker")).public_key != broker_key


def test_init_refuses_a_half_initialised_home(home: MeshHome, capsys: pytest.CaptureFixture[str]) -> None:
    provision(home, PROJECT_IDENTITIES)  # keys, but no completed init (as if init had been interrupted)
    status, _, err = run(capsys, "--home", str(home.root), "init")
    assert status == 1 and "never completely initialised" in one_line(err)
    assert run(capsys, "--home", str(home.root), "init", "--force", "--yes")[0] == 0


def test_credentials_are_never_shown_and_must_be_private(home: MeshHome) -> None:
    home.ensure()
    creds = create_credentials(home)
    assert creds.password not in repr(creds)
    assert creds.supervisord_hash().startswith("{SHA}") and creds.password not in creds.supervisord_hash()
    with pytest.raises(FileExistsError):
        create_credentials(home)  # O_EXCL: never overwritten
    os.chmod(home.keys / "supervisord.credentials", 0o644)
    with pytest.raises(Exception, match="must be 0600"):
        load_credentials(home)


def test_errors_are_one_line_with_a_status(home: MeshHome, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURVEMESH_HOME", raising=False)
    status, _, err = run(capsys, "status")
    assert status == 2 and "CURVEMESH_HOME" in one_line(err)
    status, _, err = run(capsys, "frobnicate")
    assert status == 2 and one_line(err)
    status, _, err = run(capsys, "--home", str(home.root), "status")
    assert status == 1 and "meshctl init" in one_line(err)
    status, _, err = run(capsys, "--home", str(home.root), "up")
    assert status == 1 and "not initialised" in one_line(err)
    status, _, err = run(capsys, "--home", str(home.root), "call", "storage.health", "--body", "{")
    assert status == 2 and "not valid JSON" in one_line(err)
    assert run(capsys, "--home", str(home.root), "init")[0] == 0
    status, _, err = run(capsys, "--home", str(home.root), "ping", "storage")
    assert status == 1 and "cannot reach the broker" in one_line(err)


def test_status_of_a_stopped_mesh(home: MeshHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--home", str(home.root), "init")[0] == 0
    status, out, err = run(capsys, "--home", str(home.root), "status", "--json")
    assert status == 1 and "down" in one_line(err)
    report = json.loads(out)
    assert report["healthy"] is False and report["supervisor"]["running"] is False
    # Every declared process, in start order: the broker, keyvault, the event listener, the rest.
    assert [s["name"] for s in report["services"]] == [*MESH_PROGRAMS[:2], "supervisor-events", *MESH_PROGRAMS[2:]]
    assert all(s["state"] == "NOT RUNNING" and s["registered"] is False for s in report["services"])
    assert report["broker"]["public_key"] == certs.load_certificate(home.public_key_path("broker")).public_key.decode()
    assert report["broker"]["endpoints"] == [home.broker_endpoint]


def _supervisord_options(home: MeshHome, monkeypatch: pytest.MonkeyPatch) -> ServerOptions:
    home.ensure()
    creds = Credentials("meshctl-test", "not-a-real-password")
    for key, value in {"CURVEMESH_HOME": str(home.root), "CURVEMESH_PYTHON": sys.executable,
                       "CURVEMESH_REPO": str(REPO), "CURVEMESH_SUPERVISOR_USER": creds.username,
                       "CURVEMESH_SUPERVISOR_PASSWORD_SHA": creds.supervisord_hash()}.items():
        monkeypatch.setenv(key, value)
    write_programs(home, PROJECT)  # what meshctl up renders from the declarations before it starts supervisord
    options = ServerOptions()
    options.realize(args=["-c", str(CONF)])
    return options


def test_supervisord_conf_runs_every_process_supervised(home: MeshHome, monkeypatch: pytest.MonkeyPatch) -> None:
    options = _supervisord_options(home, monkeypatch)
    groups = {g.name: g for g in options.process_group_configs}
    # One group per program: adding or removing a service never stops another.
    assert set(groups) == {*MESH_PROGRAMS, "supervisor-events"}
    programs = [p for name in MESH_PROGRAMS for p in groups[name].process_configs]
    assert [p.name for p in programs] == MESH_PROGRAMS
    priority = {p.name: p.priority for p in programs}
    assert priority["broker"] < priority["keyvault"] < min(v for k, v in priority.items()
                                                          if k not in ("broker", "keyvault"))
    listener = groups["supervisor-events"]
    assert isinstance(listener, EventListenerPoolConfig) and listener.buffer_size >= 1024
    for proc in [*programs, *listener.process_configs]:
        assert proc.command.startswith(f"{sys.executable} -m services.")
        assert proc.directory == str(REPO)
        assert proc.autorestart is RestartUnconditionally and proc.startsecs >= 1 and proc.startretries >= 1
        assert proc.stopsignal == signal.SIGTERM and proc.stopwaitsecs > 10
        assert proc.killasgroup and proc.stopasgroup
        logfile = proc.stderr_logfile if proc in listener.process_configs else proc.stdout_logfile
        assert logfile == str(home.log / f"{proc.name}.log")
    assert options.pidfile == str(home.run / "supervisord.pid")
    assert options.logfile == str(home.log / "supervisord.log") and options.umask == 0o077


def test_supervisord_is_controlled_only_by_an_authenticated_unix_socket(
        home: MeshHome, monkeypatch: pytest.MonkeyPatch) -> None:
    options = _supervisord_options(home, monkeypatch)
    (server,) = options.server_configs
    assert server["family"] == socket.AF_UNIX
    assert server["file"] == str(home.run / "supervisord.sock") and server["chmod"] == 0o700
    assert server["username"] == "meshctl-test" and server["password"].startswith("{SHA}")
    sections = configparser.RawConfigParser()
    sections.read(CONF)
    assert not [s for s in sections.sections() if s.startswith("inet_http_server")]


def test_supervisord_refuses_to_start_without_its_environment(home: MeshHome,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURVEMESH_SUPERVISOR_PASSWORD_SHA", raising=False)
    monkeypatch.setenv("CURVEMESH_HOME", str(home.root))
    home.ensure()
    with pytest.raises(SystemExit):
        ServerOptions().realize(args=["-c", str(CONF)])


def test_init_if_needed_gives_a_service_declared_after_init_its_keys(home: MeshHome,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--home", str(home.root), "init")[0] == 0
    (home.root / "mesh.d").mkdir(mode=0o700)
    (home.root / "mesh.d" / "30-notes.toml").write_text('[services.notes]\nentry = "/opt/notes.py:Notes"\n')
    untouched = {p: p.read_bytes() for p in home.keys.iterdir()}
    status, out, _ = run(capsys, "--home", str(home.root), "init", "--if-needed", "--json")
    assert status == 0 and json.loads(out)["added_identities"] == ["notes"]
    cert = certs.load_certificate(home.certs / "allowed" / "notes.key")
    assert (cert.name, cert.role) == ("notes", "service")
    assert stat.S_IMODE(os.stat(home.secret_key_path("notes")).st_mode) == 0o600
    assert all(p.read_bytes() == data for p, data in untouched.items())  # nothing else replaced
    status, out, _ = run(capsys, "--home", str(home.root), "init", "--if-needed")
    assert status == 0 and "newly declared" not in out  # once only


def test_service_add_and_remove_need_the_running_mesh_and_write_nothing_without_it(
        home: MeshHome, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--home", str(home.root), "init")[0] == 0
    entry = f"{REPO}/examples/notes/notes.py:Notes"
    status, _, err = run(capsys, "--home", str(home.root), "service", "add", "notes", "--entry", entry)
    assert status == 1 and "is not running: `meshctl up` first" in one_line(err)
    assert not home.secret_key_path("notes").exists() and not (home.root / "mesh.d").exists()
    status, out, _ = run(capsys, "--home", str(home.root), "service", "list", "--json")
    listed = json.loads(out)["services"]
    assert status == 0 and "notes" not in {s["name"] for s in listed}
    assert {s["name"] for s in listed} == set(PROJECT.services) and all(s["state"] is None for s in listed)
    status, _, err = run(capsys, "--home", str(home.root), "service", "remove", "notes")
    assert status == 1 and "no service named 'notes' is declared" in one_line(err)

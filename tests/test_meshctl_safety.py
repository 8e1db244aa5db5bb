"""meshctl on a bad day, without a running mesh, through the real CLI as a subprocess.

Destructive commands ask on a terminal (a pty here) and take ``--yes``; without a terminal they
refuse with a usage error and change nothing. Options an action does not take, and numbers that
make no sense, are refused as the command line is parsed (exit 2, one line). The tests that need
a running mesh are in test_meshctl_safety_mesh.py.
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import subprocess
import time
from pathlib import Path

import pytest
import tomli_w

from shared import MeshHome

from .test_operations_e2e import MESHCTL, REPO, _env

PROMPT_S = 60.0  # a deadline for every read from the pty, not a sleep


def run(home: MeshHome, *args: str) -> subprocess.CompletedProcess[str]:
    """meshctl with no terminal: stdin is /dev/null, stdout and stderr are pipes."""
    return subprocess.run([*MESHCTL, "--home", str(home.root), *args], cwd=REPO, env=_env(home),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, check=False)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text and lines[0].startswith("meshctl: "), text
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root`` with its mode and a digest of its content: "nothing changed"."""
    out: dict[str, tuple[int, str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = (path.stat().st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


class Terminal:
    """meshctl with a pty as its stdin, stdout and stderr, in a session of its own (so no terminal
    of whoever runs the tests can leak in). Every read waits on select() against a deadline."""

    def __init__(self, home: MeshHome, *args: str) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen([*MESHCTL, "--home", str(home.root), *args], cwd=REPO, env=_env(home),
                                     stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.seen = ""

    def _read(self, deadline: float) -> bool:
        """Read what is there (waiting until ``deadline``); False at end of output."""
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return True
        try:
            data = os.read(self.master, 4096)
        except OSError as exc:
            if exc.errno == errno.EIO:  # Linux: every slave end is closed, the process is gone
                return False
            raise
        self.seen += data.decode("utf-8", "replace").replace("\r\n", "\n")
        return bool(data)

    def expect(self, text: str) -> str:
        deadline = time.monotonic() + PROMPT_S
        while text not in self.seen:
            if time.monotonic() > deadline or not self._read(deadline):
                raise AssertionError(f"{text!r} not shown; the terminal shows:\n{self.seen}")
        return self.seen

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def finish(self) -> tuple[int, str]:
        """Read to the end of output; the exit status and everything the terminal showed."""
        deadline = time.monotonic() + PROMPT_S
        while time.monotonic() < deadline and self._read(deadline):
            pass
        try:
            status = self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        finally:
            os.close(self.master)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return status, self.seen


@pytest.fixture
def home(fast_home: MeshHome) -> MeshHome:
    """An initialised home (keys, allow-list, master key), no mesh running."""
    done = run(fast_home, "init")
    assert done.returncode == 0, done.stderr
    return fast_home


def added_service(home: MeshHome, name: str = "notes") -> None:
    """Make ``name`` look added by `meshctl service add` (its declaration fragment), as remove needs."""
    fragment = home.root / "mesh.d" / f"service-{name}.toml"
    fragment.parent.mkdir(mode=0o700, exist_ok=True)
    table = {"entry": f"{REPO}/examples/notes/notes.py:Notes", "expose": {"*": ["operator"]}}
    fragment.write_bytes(tomli_w.dumps({"services": {name: table}}).encode())
    fragment.chmod(0o600)


DESTRUCTIVE = [("down",), ("security", "lock"), ("keys", "rotate", "rocksdb"), ("certs", "revoke", "storage"),
               ("backup", "restore", "ARCHIVE"), ("service", "remove", "notes"), ("plugins", "remove", "weather")]


@pytest.mark.parametrize("argv", DESTRUCTIVE, ids=" ".join)
def test_without_a_terminal_a_destructive_command_refuses_and_changes_nothing(home: MeshHome,
                                                                              argv: tuple[str, ...]) -> None:
    added_service(home)
    archive = home.root.parent / "archive.cmbak"
    archive.write_bytes(b"not really an archive")
    argv = tuple(str(archive) if a == "ARCHIVE" else a for a in argv)
    before = snapshot(home.root)
    done = run(home, *argv)
    line = one_line(done.stderr)
    assert done.returncode == 2 and "add --yes" in line and " ".join(argv[:2]) in line, done.stderr
    assert done.stdout == "" and snapshot(home.root) == before


def test_an_answer_on_a_pipe_is_never_taken(home: MeshHome) -> None:
    before = snapshot(home.root)
    done = subprocess.run([*MESHCTL, "--home", str(home.root), "keys", "rotate", "rocksdb"], cwd=REPO,
                          env=_env(home), input="y\nyes\n", capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "add --yes" in one_line(done.stderr) and "[y/N]" not in done.stderr
    assert snapshot(home.root) == before


def test_on_a_terminal_no_aborts_and_changes_nothing(home: MeshHome) -> None:
    before = snapshot(home.root)
    for answer in (b"n\n", b"\n", b"yess\n", b"\x04"):  # no, just Enter, a typo, end of input (Ctrl-D)
        term = Terminal(home, "keys", "rotate", "rocksdb")
        shown = term.expect("[y/N]")
        assert "rotate the rocksdb data key" in shown and "new writes use a new version" in shown
        term.send(answer)
        status, shown = term.finish()
        assert status == 1 and "meshctl: aborted: nothing changed" in shown, (answer, shown)
        assert "master password" not in shown  # it stopped at the question, before the password
    assert snapshot(home.root) == before


def test_on_a_terminal_yes_goes_ahead(home: MeshHome) -> None:
    for answer in (b"y\n", b"YES\n"):
        term = Terminal(home, "security", "lock")
        assert "seal the mesh in" in term.expect("[y/N]")
        term.send(answer)
        status, shown = term.finish()
        # It went ahead, to the broker, which is not running: the next step's own error, not "aborted".
        assert status == 1 and "aborted" not in shown and "is the mesh up? (meshctl up)" in shown, shown


def test_yes_skips_the_question(home: MeshHome) -> None:
    term = Terminal(home, "security", "lock", "--yes")
    status, shown = term.finish()
    assert status == 1 and "[y/N]" not in shown and "is the mesh up?" in shown, shown
    done = run(home, "security", "lock", "-y")
    assert done.returncode == 1 and "is the mesh up?" in one_line(done.stderr)


def test_service_remove_names_a_wrong_service_before_asking(home: MeshHome) -> None:
    done = run(home, "service", "remove", "nothing-here")
    assert done.returncode == 1 and "no service named 'nothing-here' is declared" in one_line(done.stderr)
    term = Terminal(home, "service", "remove", "storage")
    status, shown = term.finish()
    assert status == 1 and "not added by `meshctl service add`" in shown and "[y/N]" not in shown


def test_down_with_nothing_running_does_not_ask(home: MeshHome) -> None:
    term = Terminal(home, "down")
    status, shown = term.finish()
    assert status == 0 and "[y/N]" not in shown and "the mesh was not running" in shown, shown


@pytest.mark.parametrize(("argv", "says"), [
    (("certs", "list", "--name", "x"), "--name does not apply to certs list (only to certs accept)"),
    (("certs", "show", "storage", "--state", "allowed"), "--state does not apply to certs show"),
    (("certs", "list", "--yes"), "--yes does not apply to certs list (only to certs revoke)"),
    (("audit", "tail", "FILE"), "FILE does not apply to audit tail (only to audit export)"),
    (("audit", "export", "f", "--type", "x"), "--type does not apply to audit export"),
    (("service", "list", "--entry", "x"), "--entry does not apply to service list (only to service add)"),
    (("service", "remove", "x", "--expose", "*=operator"), "--expose does not apply to service remove"),
    (("service", "list", "x"), "NAME does not apply to service list"),
    (("backup", "create", "FILE"), "FILE does not apply to backup create"),
    (("backup", "verify", "FILE", "--force"), "--force does not apply to backup verify"),
    (("security", "lock", "--password-file", "f"), "--password-file does not apply to security lock"),
    (("security", "unlock", "--yes"), "--yes does not apply to security unlock (only to security lock)"),
    (("keys", "list", "rocksdb"), "PURPOSE does not apply to keys list (only to keys rotate)"),
    (("alerts", "list", "3"), "ID does not apply to alerts list (only to alerts ack)"),
    (("events", "tail", "-f", "--wait", "3"), "--wait does not apply with -f"),
    (("logs", "broker", "--timeout", "3"), "unrecognized arguments: --timeout 3"),
    (("status", "--yes"), "unrecognized arguments: --yes"),
])
def test_an_option_the_action_does_not_take_is_refused(fast_home: MeshHome, argv: tuple[str, ...],
                                                       says: str) -> None:
    before = snapshot(fast_home.root)
    done = run(fast_home, *argv)
    assert done.returncode == 2 and says in one_line(done.stderr) and done.stdout == ""
    assert snapshot(fast_home.root) == before


@pytest.mark.parametrize(("argv", "says"), [
    (("up", "--timeout", "-1"), "argument --timeout: '-1' is not a number of seconds above 0"),
    (("up", "--timeout", "0"), "argument --timeout: '0' is not a number of seconds above 0"),
    (("down", "--timeout", "nan", "--yes"), "argument --timeout: 'nan' is not a number of seconds above 0"),
    (("ping", "mesh", "--timeout", "inf"), "argument --timeout: 'inf' is not a number of seconds above 0"),
    (("call", "mesh.ping", "--timeout", "1e300"), "argument --timeout: '1e300' is more than a day"),
    (("restart", "storage", "--timeout", "soon"), "argument --timeout: 'soon' is not a number of seconds"),
    (("service", "add", "x", "--timeout", "-5"), "argument --timeout: '-5' is not a number of seconds above 0"),
    (("service", "add", "x", "--priority", "-1"), "argument --priority: '-1' is not a whole number of at least 0"),
    (("events", "tail", "--wait", "-2"), "argument --wait: '-2' is not a number of seconds above 0"),
    (("events", "tail", "--count", "0"), "argument --count: '0' is not a whole number of at least 1"),
    (("audit", "tail", "-n", "-3"), "argument -n/--lines: '-3' is not a whole number from 1 to 1000"),
    (("audit", "tail", "--lines", "1001"), "argument -n/--lines: '1001' is not a whole number from 1 to 1000"),
    (("logs", "broker", "-n", "-1"), "argument -n/--lines: '-1' is not a whole number of at least 0"),
    (("alerts", "ack", "-4"), "argument ID: '-4' is not a whole number of at least 0"),
])
def test_numbers_are_checked_as_the_line_is_parsed(fast_home: MeshHome, argv: tuple[str, ...], says: str) -> None:
    done = run(fast_home, *argv)
    assert done.returncode == 2 and says in one_line(done.stderr) and done.stdout == ""


def test_every_table_names_real_arguments_and_actions() -> None:
    # Building the parser checks each command's table against its arguments (a typo raises).
    from tools.meshctl_cli import _args, _parser

    parser = _parser.build()
    assert _args.inapplicable(parser, parser.parse_args(["certs", "list", "--state", "revoked"])) is None
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert subparsers is not None
    for name in ("certs", "security", "keys", "audit", "alerts", "backup", "service", "roles", "policy", "consent",
                 "pair", "devices", "plugins"):
        assert subparsers[name] in _args._TABLES, name


@pytest.mark.parametrize(("argv", "next_step"), [
    (("certs", "revoke", "-y", "storage"), "is the mesh up? (meshctl up)"),
    (("certs", "revoke", "storage", "--yes"), "is the mesh up? (meshctl up)"),
    (("backup", "restore", "--yes", "ARCHIVE"), "is the mesh up? (meshctl up)"),
    (("keys", "rotate", "-y", "rocksdb"), "no terminal to ask for the master password"),
])
def test_yes_goes_before_or_after_the_operand(home: MeshHome, argv: tuple[str, ...], next_step: str) -> None:
    # Plain argparse binds an optional operand before the first option: `revoke -y storage` would
    # be refused as "unrecognized arguments: storage". Each gets past parsing and the question to
    # its next step, which fails here for want of a mesh or a password.
    archive = home.root.parent / "archive.cmbak"
    archive.write_bytes(b"not really an archive")
    done = run(home, *(str(archive) if a == "ARCHIVE" else a for a in argv))
    assert done.returncode in (1, 2) and next_step in one_line(done.stderr), done.stderr


def test_init_force_asks_and_yes_belongs_to_it_alone(home: MeshHome) -> None:
    """`init --force` replaces every key of a home: without a terminal it needs --yes, like the rest."""
    before = snapshot(home.root)
    done = run(home, "init", "--force")
    assert done.returncode == 2 and "add --yes" in one_line(done.stderr)
    done = run(home, "init", "--yes")
    assert done.returncode == 2 and "--yes applies only to init --force" in one_line(done.stderr)
    assert snapshot(home.root) == before
    term = Terminal(home, "init", "--force")
    assert "replace every key, certificate and credential" in term.expect("[y/N]")
    term.send(b"n\n")
    status, shown = term.finish()
    assert status == 1 and "aborted: nothing changed" in shown
    assert snapshot(home.root) == before

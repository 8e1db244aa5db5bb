"""Compiled modules (shared/native.py, tools/build_native.py): used only while they match their sources.

A real build with mypyc and the C compiler: a small package of its own in a temporary directory,
whose compiled module returns a ``Final`` constant of a module it imports (which mypyc inlines,
so a compiled module goes stale when only its import changed). Each import runs in a fresh
interpreter, as a service start does. Then the repository's own build: the key-value formats run
compiled after ``make``, and their known-answer tests pass from the sources too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import native
from tools import build_native

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 120.0

PACKAGE_INIT = '''from pathlib import Path
from shared import native
NATIVE = native.load(__name__ + ".inner", Path(__file__).parent / "inner")
'''
LIMITS = '''from typing import Final
LIMIT: Final = {limit}
'''
FAST = '''from .limits import LIMIT


def limit() -> int:
    return LIMIT
'''
PROBE = '''import json
import demo
from demo.inner import fast
print(json.dumps({"compiled": demo.NATIVE.compiled, "reason": demo.NATIVE.reason, "file": fast.__file__,
                  "limit": fast.limit()}))
'''


def _probe(root: Path, **env: str) -> dict[str, object]:
    """Import the demo package in a fresh interpreter: what it decided and what it ran."""
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=root, capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{REPO}", **env}, check=False)
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``demo.inner.fast`` compiled by the build tool; ``demo/inner/limits.py`` holds LIMIT = 3."""
    root = tmp_path_factory.mktemp("native")
    inner = root / "demo" / "inner"
    inner.mkdir(parents=True)
    (root / "demo" / "__init__.py").write_text(PACKAGE_INIT)
    (inner / "__init__.py").write_text("")
    (inner / "limits.py").write_text(LIMITS.format(limit=3))
    (inner / "fast.py").write_text(FAST)
    build_native.build(root, "demo.inner", ("fast",))
    return root


def test_a_valid_build_is_imported_and_records_every_source_it_read(demo: Path) -> None:
    inner = demo / "demo" / "inner"
    answer = _probe(demo)
    assert answer["compiled"] is True and answer["reason"] == ""
    assert str(answer["file"]).endswith(".so") and answer["limit"] == 3
    record = json.loads((inner / native.RECORD).read_text())
    assert record["modules"] == ["fast"]
    # The module and the one it imports; not the packages around them, which it never names.
    assert sorted(record["sources"]) == ["demo/inner/fast.py", "demo/inner/limits.py"]


def test_a_change_to_an_imported_module_makes_the_build_stale_and_the_sources_run(demo: Path) -> None:
    """The compiled ``fast`` inlined LIMIT = 3: were it used after LIMIT became 4, it would answer 3."""
    limits = demo / "demo" / "inner" / "limits.py"
    limits.write_text(LIMITS.format(limit=4))
    try:
        answer = _probe(demo)
        assert answer["compiled"] is False
        assert answer["reason"] == "demo/inner/limits.py changed since the modules were compiled"
        assert str(answer["file"]).endswith("fast.py") and answer["limit"] == 4
        assert native.stale("demo.inner", demo / "demo" / "inner") == answer["reason"]
    finally:
        limits.write_text(LIMITS.format(limit=3))
    assert _probe(demo)["compiled"] is True


def test_unguarded_a_stale_build_would_answer_the_old_constant(tmp_path: Path, demo: Path) -> None:
    """Why the record covers imported modules too: the same change with the package's check taken
    out, and the compiled ``fast`` still answers 3, the LIMIT it was built with."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    (copy / "demo" / "__init__.py").write_text("NATIVE = None\n")
    (copy / "demo" / "inner" / "limits.py").write_text(LIMITS.format(limit=4))
    probe = PROBE.replace('demo.NATIVE.compiled, "reason": demo.NATIVE.reason', 'None, "reason": None')
    done = subprocess.run([sys.executable, "-c", probe], cwd=copy, capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, "PYTHONPATH": f"{copy}{os.pathsep}{REPO}"}, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert str(answer["file"]).endswith(".so") and answer["limit"] == 3


@pytest.mark.parametrize("record, reason", [
    (None, "no build record (native.json) vouches for the compiled modules"),
    (b"{not json", "the build record (native.json) is unreadable"),
    (b'{"format": 2, "modules": "fast"}', "the build record (native.json) is not one this code wrote"),
    (b'{"format": 2, "abi": ".cpython-27.so", "modules": ["fast"], "binaries": {}, "sources": {}}',
     "the modules were compiled for another interpreter"),
    (b'{"format": 2, "abi": "%s", "modules": ["fast"], "binaries": {}, "sources": {"../../etc/hostname": "00"}}'
     % native.ABI.encode(), "the build record (native.json) is not one this code wrote"),
], ids=["missing", "garbage", "other-shape", "other-abi", "outside-the-project"])
def test_without_a_record_that_vouches_for_the_build_the_sources_run(
        demo: Path, record: bytes | None, reason: str) -> None:
    path = demo / "demo" / "inner" / native.RECORD
    kept = path.read_bytes()
    try:
        if record is None:
            path.unlink()
        else:
            path.write_bytes(record)
        answer = _probe(demo)
        assert (answer["compiled"], answer["reason"]) == (False, reason)
        assert str(answer["file"]).endswith("fast.py")
    finally:
        path.write_bytes(kept)


def test_a_source_removed_or_a_module_compiled_outside_the_build_runs_the_sources(demo: Path) -> None:
    inner = demo / "demo" / "inner"
    record = json.loads((inner / native.RECORD).read_text())
    gone = {**record, "sources": {**record["sources"], "demo/inner/old.py": "00"}}
    (inner / native.RECORD).write_text(json.dumps(gone))
    try:
        assert _probe(demo)["reason"] == "demo/inner/old.py is gone since the modules were compiled"
    finally:
        (inner / native.RECORD).write_text(json.dumps(record))
    extra = inner / f"limits{native.ABI}"
    extra.write_bytes((inner / f"fast{native.ABI}").read_bytes())
    try:
        answer = _probe(demo)
        assert answer["reason"] == "the compiled modules are not the ones the build record lists"
        assert str(answer["file"]).endswith("fast.py")
    finally:
        extra.unlink()


def test_a_compiled_file_changed_after_the_build_runs_the_sources(demo: Path) -> None:
    """The record vouches for the binaries too: one swapped or edited after the build (here one
    byte appended to the support library, which still loads) is never imported."""
    library = demo / "demo" / "inner" / f"native__mypyc{native.ABI}"
    kept = library.read_bytes()
    try:
        library.write_bytes(kept + b"\0")
        answer = _probe(demo)
        assert answer["reason"] == f"native__mypyc{native.ABI} is not the file the build made"
        assert str(answer["file"]).endswith("fast.py")
    finally:
        library.write_bytes(kept)
    assert _probe(demo)["compiled"] is True


def test_curvemesh_native_0_runs_the_sources_of_a_valid_build(demo: Path) -> None:
    answer = _probe(demo, CURVEMESH_NATIVE="0")
    assert (answer["compiled"], answer["reason"]) == (False, "CURVEMESH_NATIVE=0")
    assert str(answer["file"]).endswith("fast.py")


def test_clean_removes_the_record_and_every_extension_file(tmp_path: Path, demo: Path) -> None:
    """A copy of the built package, cleaned: nothing compiled is left, not even an orphan without
    its source, and nothing vouches for anything."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    inner = copy / "demo" / "inner"
    (inner / f"gone{native.ABI}").write_bytes(b"")  # left by a module since removed
    build_native.clean(copy, "demo.inner")
    assert sorted(p.name for p in inner.iterdir() if p.is_file()) == ["__init__.py", "fast.py", "limits.py"]
    assert _probe(copy)["reason"] == "no module of this package is compiled (make native)"


def test_a_machine_without_a_compiler_keeps_the_sources_and_says_what_is_missing(
        tmp_path: Path, demo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the built package rebuilt with no compiler on PATH: the old build is removed (it
    could be stale), nothing is recorded, and the error names what is missing."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(demo, copy)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(build_native.NoToolchain, match="no C compiler"):
        build_native.build(copy, "demo.inner", ("fast",))
    monkeypatch.undo()
    assert not native.compiled_files(copy / "demo" / "inner")
    assert not (copy / "demo" / "inner" / native.RECORD).exists()
    assert _probe(copy)["reason"] == "no module of this package is compiled (make native)"


def test_a_module_mypyc_refuses_fails_the_build_with_its_report(tmp_path: Path) -> None:
    """A type error in a compiled module: BuildError (not NoToolchain) ending with mypy's report,
    and nothing compiled or recorded."""
    inner = tmp_path / "demo" / "inner"
    inner.mkdir(parents=True)
    (tmp_path / "demo" / "__init__.py").write_text(PACKAGE_INIT)
    (inner / "__init__.py").write_text("")
    (inner / "fast.py").write_text('def limit() -> int:\n    return "three"\n')
    with pytest.raises(build_native.BuildError) as raised:
        build_native.build(tmp_path, "demo.inner", ("fast",))
    assert not isinstance(raised.value, build_native.NoToolchain)
    assert 'Incompatible return value type (got "str", expected "int")' in str(raised.value)
    assert not native.compiled_files(inner) and not (inner / native.RECORD).exists()


def test_the_kv_formats_run_compiled() -> None:
    """``make test`` (and ``make up``) compile the formats first: a failure here says why they are not."""
    from services.storage.kv import NATIVE
    from services.storage.kv.sealing import _material, v1, v2

    assert NATIVE.compiled, f"the key-value formats run from their sources: {NATIVE.reason}; run: make native"
    for module in (_material, v1, v2):
        assert module.__file__ is not None and module.__file__.endswith(native.ABI)


def test_the_kv_formats_pass_their_tests_from_their_sources_too() -> None:
    """The same bytes from both builds: the format tests, run again with CURVEMESH_NATIVE=0."""
    run = ("import sys, pytest\n"
           "from services.storage.kv import NATIVE\n"
           "assert not NATIVE.compiled and NATIVE.reason == 'CURVEMESH_NATIVE=0', NATIVE\n"
           "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', 'tests/test_storage_kv.py']))\n")
    done = subprocess.run([sys.executable, "-c", run], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, "CURVEMESH_NATIVE": "0"}, check=False)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout

"""Configuration layers: the base file, then ``<home>/mesh.d/*.toml`` merged over it by key.

A fragment adds to or overrides the base without copying it; each fragment is validated alone (its
file and key named), the merge as a whole; fragments anyone else could have written are refused;
``meshctl config show`` says where each value came from; a real process refuses to start over a bad
fragment; the broker's audited configuration digest covers the fragments.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.broker.core import Broker
from shared import (
    CONFIG_BUILT_IN,
    ConfigError,
    MeshHome,
    config_layers,
    config_provenance,
    merge_config,
    mesh_config,
    parse_config,
)
from tools.meshctl_cli import main as meshctl_main

from .processes import REPO

BASE = """
[broker]
liveness_ms = 6000

[acl.identity.notes]
call = ["storage.kv.*", "audit.append"]
subscribe = ["security."]
"""


def _home(tmp: Path, base: str = BASE, **fragments: str) -> MeshHome:
    home = MeshHome(tmp / "h")
    home.ensure()
    (home.root / "mesh.toml").write_text(base)
    if fragments:
        (home.root / "mesh.d").mkdir(mode=0o700)
        for name, text in fragments.items():
            (home.root / "mesh.d" / f"{name}.toml").write_text(text)
    return home


def test_without_fragments_the_base_is_the_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURVEMESH_CONFIG", raising=False)
    home = _home(tmp_path)
    assert mesh_config(home.root) == parse_config(BASE)


def test_fragments_merge_by_key_in_name_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURVEMESH_CONFIG", raising=False)
    home = _home(tmp_path, **{
        "20-later": "[broker]\nliveness_ms = 8000\n",
        "10-notes": "[broker]\nliveness_ms = 7000\nheartbeat_interval_ms = 500\n\n"
                    "[acl.identity.notes]\ncall = []\n\n[acl.identity.reminders]\ncall = [\"storage.kv.*\"]\n",
        "30-empty": "",  # an empty fragment is a valid (empty) layer
    })
    (home.root / "mesh.d" / "notes.toml.bak").write_text("not = [valid")  # not .toml: ignored
    config = mesh_config(home.root)
    assert config.broker.liveness_ms == 8000          # 20-later is merged after 10-notes
    assert config.broker.heartbeat_interval_ms == 500  # from 10-notes, untouched by 20-later
    assert config.acl.identity["notes"].call == ()     # a list is replaced whole: the grant is gone
    assert config.acl.identity["notes"].subscribe == ("security.",)  # the rest of the table stays
    assert config.acl.identity["reminders"].call == ("storage.kv.*",)


def test_merge_replaces_values_and_merges_tables() -> None:
    assert merge_config({"a": {"x": 1, "y": [1]}, "b": 1}, {"a": {"y": [2], "z": 3}}) == {
        "a": {"x": 1, "y": [2], "z": 3}, "b": 1}


def test_a_bad_fragment_is_refused_naming_its_file_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURVEMESH_CONFIG", raising=False)
    home = _home(tmp_path, **{"10-bad": "[broker]\nliveness_msx = 7000\n"})
    fragment = home.root / "mesh.d" / "10-bad.toml"
    with pytest.raises(ConfigError, match="^" + re.escape(f"{fragment}: broker.liveness_msx: unknown key") + "$"):
        mesh_config(home.root)
    fragment.write_text("[broker]\nliveness_ms = 1\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{fragment}: broker.liveness_ms")):
        mesh_config(home.root)
    fragment.write_text("[broker\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"{fragment}: not valid TOML")):
        mesh_config(home.root)


def test_a_merge_that_breaks_a_cross_key_rule_names_every_layer(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURVEMESH_CONFIG", raising=False)
    # Each is valid alone; together the liveness is shorter than three heartbeats.
    home = _home(tmp_path, "[broker]\nheartbeat_interval_ms = 1900\nliveness_ms = 6000\n",
                 **{"10-short": "[broker]\nliveness_ms = 5000\n"})
    with pytest.raises(ConfigError) as refused:
        mesh_config(home.root)
    message = refused.value.message
    assert message.startswith(f"{home.root / 'mesh.toml'} + {home.root / 'mesh.d' / '10-short.toml'}: broker.")


def test_fragments_someone_else_could_write_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURVEMESH_CONFIG", raising=False)
    home = _home(tmp_path, **{"10-notes": "[broker]\nliveness_ms = 7000\n"})
    fragment = home.root / "mesh.d" / "10-notes.toml"
    fragment.chmod(0o664)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{fragment}: writable by group or others") + ".*chmod go-w"):
        mesh_config(home.root)
    fragment.chmod(0o644)
    assert mesh_config(home.root).broker.liveness_ms == 7000
    outside = tmp_path / "outside.toml"
    outside.write_text("[broker]\nliveness_ms = 9000\n")
    (home.root / "mesh.d" / "20-link.toml").symlink_to(outside)
    with pytest.raises(ConfigError, match=re.escape("20-link.toml: must be a regular file, not a symlink")):
        mesh_config(home.root)
    (home.root / "mesh.d" / "20-link.toml").unlink()
    (home.root / "mesh.d").chmod(0o777)
    with pytest.raises(ConfigError, match=re.escape("mesh.d: writable by group or others")):
        mesh_config(home.root)


def test_provenance_names_the_layer_of_every_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURVEMESH_CONFIG", raising=False)
    home = _home(tmp_path, **{"10-notes": "[broker]\nliveness_ms = 7000\n"})
    rows = {key: (value, source) for key, value, source in config_provenance(config_layers(home.root))}
    assert rows["broker.liveness_ms"] == (7000, str(home.root / "mesh.d" / "10-notes.toml"))
    assert rows["acl.identity.notes.call"] == (["storage.kv.*", "audit.append"], str(home.root / "mesh.toml"))
    assert rows["broker.max_message_bytes"] == (1048576, CONFIG_BUILT_IN)


def test_meshctl_config_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CURVEMESH_CONFIG", raising=False)
    home = _home(tmp_path, **{"10-notes": "[broker]\nliveness_ms = 7000\n"})
    fragment = str(home.root / "mesh.d" / "10-notes.toml")
    assert meshctl_main(["--home", str(home.root), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("broker.liveness_ms = 7000 ") and line.endswith(f"# {fragment}")
               for line in out.splitlines())
    assert meshctl_main(["--home", str(home.root), "--json", "config", "show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["files"] == [str(home.root / "mesh.toml"), fragment]
    assert {"key": "broker.liveness_ms", "value": 7000, "source": fragment} in shown["settings"]
    (home.root / "mesh.d" / "10-notes.toml").write_text("[broker]\nnope = 1\n")
    assert meshctl_main(["--home", str(home.root), "config", "show"]) == 1
    assert f"{fragment}: broker.nope: unknown key" in capsys.readouterr().err


def test_a_process_refuses_to_start_over_a_bad_fragment(tmp_path: Path) -> None:
    home = _home(tmp_path, **{"10-bad": "[runtime]\nheartbeat_interval_msx = 100\n"})
    env = {**os.environ, "CURVEMESH_HOME": str(home.root)}
    env.pop("CURVEMESH_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "services.authn"], cwd=REPO, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)
    fragment = home.root / "mesh.d" / "10-bad.toml"
    assert done.returncode == 2
    assert f"authn: {fragment}: runtime.heartbeat_interval_msx: unknown key" in done.stderr


def test_the_audited_digest_covers_the_fragments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CURVEMESH_CONFIG", raising=False)
    home = _home(tmp_path)
    from shared import certs
    certs.save_keypair(certs.generate("broker", "service"), home.keys)

    def digest() -> tuple[str, str]:
        broker = Broker(mesh_config(home.root), home)
        try:
            broker.audit_config()
            record = [r for r in broker.spool.pending(1000) if r.get("type") == "mesh.config"][-1]
        finally:  # never bound or run: only what the constructor opened
            broker.spool.close()
            broker.context.term()
        return record["sha256"], record["path"]

    alone, path = digest()
    assert path == str(home.root / "mesh.toml")
    home_fragment = _home(tmp_path, **{"10-notes": "[broker]\nliveness_ms = 7000\n"})
    with_fragment, path = digest()
    assert with_fragment != alone and path.endswith(f" + {home_fragment.root / 'mesh.d' / '10-notes.toml'}")
    (home.root / "mesh.d" / "10-notes.toml").write_text("[broker]\nliveness_ms = 7001\n")
    assert digest()[0] != with_fragment  # editing a fragment changes it too

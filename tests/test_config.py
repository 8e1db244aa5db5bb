"""mesh.toml: strict parsing into frozen config; bad input stops start with the key named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shared import DEFAULT_CONFIG_PATH, ConfigError, MeshConfig, load_config, parse_config


def test_the_repository_mesh_toml_parses_to_the_documented_defaults() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)
    defaults = MeshConfig()
    assert config.broker == defaults.broker and config.runtime == defaults.runtime
    assert config.argon2 == defaults.argon2 and config.limits.default == defaults.limits.default
    assert "mesh.*" in config.acl.role["operator"].call


def test_config_is_frozen() -> None:
    config = parse_config("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.broker.liveness_ms = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        parse_config("[acl.role.operator]\ncall=['a.b']").acl.role["x"] = None  # type: ignore[index]


@pytest.mark.parametrize("text, key", [
    ("[broker]\nnope = 1", "broker.nope: unknown key"),
    ("surprise = true", "surprise: unknown key"),
    ("[broker]\nliveness_ms = 'soon'", "broker.liveness_ms: must be of type int"),
    ("[broker]\nliveness_ms = 10", "broker.liveness_ms: 10 is outside"),
    ("[broker]\nliveness_ms = 2000\nheartbeat_interval_ms = 1000", "broker.liveness_ms: must be at least 3"),
    ("[broker]\ntcp_endpoints = ['udp://x:1']", "broker.tcp_endpoints"),
    ("[broker]\ntcp_endpoints = 'tcp://127.0.0.1:1'", "broker.tcp_endpoints: must be a list"),
    ("[runtime]\nreconnect_min_ms = 500\nreconnect_max_ms = 100", "runtime.reconnect_max_ms"),
    ("[acl.role.root]\ncall = []", "acl.role.root: unknown role"),
    ("[acl.identity.BAD]\ncall = []", "acl.identity.BAD: not a valid identity name"),
    ("[acl.identity.x]\ncall = ['*.*']", "acl.identity.x.call"),
    ("[acl.identity.x]\ncall = ['everything']", "acl.identity.x.call"),
    ("[acl.identity.x]\nsubscribe = ['']", "acl.identity.x.subscribe"),
    ("[acl.identity.x]\nexecute = []", "acl.identity.x.execute: unknown key"),
    ("[limits.default]\nrate = -1", "limits.default.rate"),
    ("[limits.role.superuser]\nrate = 1", "limits.role.superuser: unknown role"),
    ("[argon2.master]\nmemory_kib = true", "argon2.master.memory_kib"),
    ("version = 2", "version: this curvemesh reads version 1"),
    ("[broker", "not valid TOML"),
])
def test_bad_config_names_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "mesh.toml")
    assert key in info.value.message and info.value.message.startswith("mesh.toml: ")


def test_unreadable_config_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "missing.toml")


def test_a_partial_table_keeps_the_contexts_own_defaults() -> None:
    config = parse_config("[argon2.master]\niterations = 4\n[broker]\nliveness_ms = 9000")
    assert config.argon2.master.memory_kib == 1 << 20 and config.argon2.master.parallelism == 4
    assert config.argon2.master.iterations == 4
    assert config.broker.heartbeat_interval_ms == 1000 and config.broker.liveness_ms == 9000


def test_call_groups_grant_a_dotted_method_prefix_and_nothing_else() -> None:
    from shared import compile_grant

    config = parse_config('[acl.role.service]\ncall = ["storage.kv.*", "storage.files.put.*"]\n', "test")
    grant = compile_grant(config.acl, "authn", "service")
    allowed = [("storage", "kv.put"), ("storage", "kv.scan"), ("storage", "files.put.begin")]
    refused = [("storage", "kvx.put"), ("storage", "kv"), ("storage", "files.get"), ("storage", "verify"),
               ("keyvault", "kv.put")]
    assert all(grant.may_call(s, m) for s, m in allowed)
    assert not any(grant.may_call(s, m) for s, m in refused)
    with pytest.raises(ConfigError):
        parse_config('[acl.role.service]\ncall = ["storage.kv*"]\n', "test")

"""``[plugins]`` of mesh.toml: trusted publishers and plugin-host's limits, strictly parsed."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from shared import DEFAULT_CONFIG_PATH, ConfigError, MeshConfig, PluginsConfig, load_config, parse_config
from shared.plugins import generate_publisher_key, parse_publisher_key


def test_the_defaults_trust_no_publisher() -> None:
    config = parse_config("")
    assert config.plugins == PluginsConfig() and dict(config.plugins.publishers) == {}
    assert (config.plugins.max_memory_mb, config.plugins.max_cpu_s, config.plugins.max_call_timeout_s) == \
        (1024, 600, 60.0)
    assert (config.plugins.start_timeout_s, config.plugins.restart_backoff_min_s,
            config.plugins.restart_backoff_max_s) == (10.0, 1.0, 60.0)
    assert (config.plugins.max_failures, config.plugins.failure_window_s) == (5, 600.0)
    assert (config.plugins.max_message_bytes, config.plugins.messages_per_s, config.plugins.log_bytes_per_s,
            config.plugins.log_lines) == (262144, 10_000, 65536, 1000)


def test_the_repository_mesh_toml_says_the_defaults() -> None:
    assert load_config(DEFAULT_CONFIG_PATH).plugins == MeshConfig().plugins


def test_publishers_are_listed_by_key_id(tmp_path: Path) -> None:
    first = generate_publisher_key(tmp_path / "a.pem")
    second = generate_publisher_key(tmp_path / "b.pem")
    config = parse_config(f'[plugins.publishers]\nacme-2026 = "{first}"\n"example.org_2" = "{second}"\n')
    assert dict(config.plugins.publishers) == {"acme-2026": first, "example.org_2": second}
    assert parse_publisher_key(config.plugins.publishers["acme-2026"])
    with pytest.raises(TypeError):
        config.plugins.publishers["x"] = first  # type: ignore[index]


KEY = "ed25519:" + base64.b64encode(bytes(range(1, 33))).decode()


@pytest.mark.parametrize("text, named", [
    ('[plugins.publishers]\nacme = "ed25519:AAAA"', "plugins.publishers.acme: not a publisher public key"),
    ('[plugins.publishers]\nacme = "-----BEGIN PRIVATE KEY-----"', "plugins.publishers.acme:"),
    ('[plugins.publishers]\nacme = 5', "plugins.publishers.acme: must be of type str"),
    (f'[plugins.publishers]\nAcme = "{KEY}"', "plugins.publishers.'Acme': not a publisher key id"),
    (f'[plugins.publishers]\n"-acme" = "{KEY}"', "plugins.publishers.'-acme'"),
    ('[plugins]\npublishers = ["acme"]', "plugins.publishers: must be a table"),
    ("[plugins]\nsurprise = 1", "plugins.surprise: unknown key"),
    ("[plugins]\nmax_memory_mb = 16", "plugins.max_memory_mb: 16 is outside"),
    ("[plugins]\nmax_cpu_s = 0", "plugins.max_cpu_s"),
    ("[plugins]\nmax_call_timeout_s = 'long'", "plugins.max_call_timeout_s: must be a number"),
    ("[plugins]\nmax_failures = 0", "plugins.max_failures"),
    ("[plugins]\nfailure_window_s = 0.5", "plugins.failure_window_s"),
    ("[plugins]\nmax_message_bytes = 100", "plugins.max_message_bytes"),
    ("[plugins]\nmessages_per_s = true", "plugins.messages_per_s: must be of type int"),
    ("[plugins]\nlog_bytes_per_s = 1", "plugins.log_bytes_per_s"),
    ("[plugins]\nlog_lines = 0", "plugins.log_lines"),
    ("[plugins]\nstart_timeout_s = 0", "plugins.start_timeout_s"),
    ("[plugins]\nrestart_backoff_min_s = 30.0\nrestart_backoff_max_s = 10.0", "plugins.restart_backoff_min_s"),
])
def test_a_bad_plugins_table_stops_loading_naming_the_key(text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "mesh.toml")
    assert info.value.message.startswith("mesh.toml: ") and named in info.value.message, info.value.message
    assert "BEGIN" not in info.value.message

"""mesh.toml, parsed once into typed, frozen configuration.

Every section is a frozen dataclass. Parsing is strict: an unknown key, a
value of the wrong type or outside its range stops the process at start with
a :class:`~shared.ConfigError` that names the key (``broker.liveness_ms``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ._argon2 import Argon2Profile, check_profile
from ._certs import NAME_RE, ROLES
from ._config_authn import AuthnConfig
from ._config_authz import AuthzConfig
from ._config_pairing import PairingConfig
from ._config_plugins import PluginsConfig
from ._declarations import (
    CALL_RE,
    TOPIC_RE,
    AclConfig,
    ServiceDeclaration,
    check_names,
    derive_acl,
    derive_entitlements,
    identities,
    processes,
)
from ._errors import ConfigError
from ._purposes import PURPOSES

CONFIG_VERSION: Final = 1


def _empty() -> Mapping[str, Any]:
    return types.MappingProxyType({})



def _range(lo: float, hi: float) -> dict[str, float]:
    return {"min": lo, "max": hi}


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """``[broker]``: endpoints, message limits, liveness and the allow-list store."""

    tcp_endpoints: tuple[str, ...] = ()
    zap_domain: str = "curvemesh"
    max_message_bytes: int = field(default=1 << 20, metadata=_range(1024, 64 << 20))
    max_header_bytes: int = field(default=4096, metadata=_range(2048, 65536))
    heartbeat_interval_ms: int = field(default=1000, metadata=_range(50, 60_000))
    liveness_ms: int = field(default=5000, metadata=_range(150, 600_000))
    default_ttl_ms: int = field(default=10_000, metadata=_range(1, 3_600_000))
    max_ttl_ms: int = field(default=600_000, metadata=_range(1, 86_400_000))
    high_water_mark: int = field(default=10_000, metadata=_range(16, 1_000_000))
    pending_max: int = field(default=256, metadata=_range(1, 100_000))
    pending_per_address_per_minute: int = field(default=20, metadata=_range(1, 100_000))
    spool_max_records: int = field(default=10_000, metadata=_range(10, 10_000_000))
    cert_reload_interval_ms: int = field(default=1000, metadata=_range(50, 60_000))

    def __post_init__(self) -> None:
        for endpoint in self.tcp_endpoints:
            if not re.match(r"^tcp://[\w.\-:\[\]*]+:\d+$", endpoint):
                raise ConfigError(f"broker.tcp_endpoints: {endpoint!r} is not a tcp://host:port endpoint")
        if not re.match(r"^[a-z][a-z0-9_-]{0,63}$", self.zap_domain):
            raise ConfigError("broker.zap_domain: 1-64 characters of a-z, 0-9, '-' and '_'")
        if self.liveness_ms < 3 * self.heartbeat_interval_ms:
            raise ConfigError("broker.liveness_ms: must be at least 3 heartbeat intervals")


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """``[runtime]``: how every peer talks to the broker."""

    heartbeat_interval_ms: int = field(default=1000, metadata=_range(50, 60_000))
    liveness_ms: int = field(default=5000, metadata=_range(150, 600_000))
    reconnect_min_ms: int = field(default=100, metadata=_range(10, 60_000))
    reconnect_max_ms: int = field(default=5000, metadata=_range(10, 600_000))
    handshake_timeout_ms: int = field(default=5000, metadata=_range(100, 600_000))
    default_timeout_ms: int = field(default=10_000, metadata=_range(1, 3_600_000))
    shutdown_grace_ms: int = field(default=10_000, metadata=_range(0, 600_000))
    max_concurrent: int = field(default=64, metadata=_range(1, 10_000))

    def __post_init__(self) -> None:
        if self.reconnect_max_ms < self.reconnect_min_ms:
            raise ConfigError("runtime.reconnect_max_ms: must not be below runtime.reconnect_min_ms")
        if self.liveness_ms < 3 * self.heartbeat_interval_ms:
            raise ConfigError("runtime.liveness_ms: must be at least 3 heartbeat intervals")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``rate`` messages per second, bursts of up to ``burst``."""

    rate: float = field(default=2000.0, metadata=_range(0.001, 10_000_000))
    burst: int = field(default=4000, metadata=_range(1, 10_000_000))


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: per-identity rate limits; an identity entry beats a role entry beats ``default``."""

    default: RateLimit = RateLimit()
    role: Mapping[str, RateLimit] = field(default_factory=_empty)
    identity: Mapping[str, RateLimit] = field(default_factory=_empty)


@dataclass(frozen=True, slots=True)
class Argon2Config:
    """``[argon2]``: the four context profiles of DESIGN.md."""

    master: Argon2Profile = Argon2Profile(1 << 20, 3, 4)
    database: Argon2Profile = Argon2Profile(256 << 10, 2, 2)
    file: Argon2Profile = Argon2Profile(128 << 10, 1, 2)
    authentication: Argon2Profile = Argon2Profile(64 << 10, 1, 1)
    #: Allow profiles below the OWASP floor. Only for tests: ``meshctl status`` shows it loudly.
    test_profiles: bool = False

    def __post_init__(self) -> None:
        for context in ("master", "database", "file", "authentication"):
            check_profile(context, getattr(self, context), self.test_profiles)


@dataclass(frozen=True, slots=True)
class KeyvaultConfig:
    """``[keyvault]``: where the master key is kept and who may fetch which data keys.

    ``keystore``: ``auto`` (the platform keyring when a secure backend works, else a
    0600 file in the anchor directory with a loud warning), ``keyring`` (refuse to start
    without one), ``file`` (the anchor directory) or ``password`` (the master key is never
    stored: keyvault starts sealed until ``meshctl security unlock``; the other anchors
    behave as with ``auto``). ``anchor_dir``: where file-kept anchors live, outside the
    home (empty: ``${XDG_STATE_HOME:-$HOME/.local/state}/curvemesh``); an absolute path,
    checked against the home when a service starts. ``entitlements`` names data keys an identity
    may fetch beyond the ``keys`` its ``[services.<name>]`` declaration lists (the two add up).
    """

    keystore: str = "auto"
    anchor_dir: str = ""
    session_idle_s: int = field(default=1800, metadata=_range(10, 86_400))
    unlock_backoff_base_ms: int = field(default=1000, metadata=_range(1, 60_000))
    unlock_backoff_max_ms: int = field(default=300_000, metadata=_range(1, 86_400_000))
    #: Key releases per identity per minute: services fetch keys at start and unlock, so
    #: a loop of fetches is a fault or an attack, and must not fill the audit spool.
    key_fetches_per_minute: int = field(default=60, metadata=_range(1, 10_000_000))
    #: Audit records keyvault keeps until the audit service takes them (fail closed when full).
    audit_spool_max_records: int = field(default=1_000_000, metadata=_range(100, 100_000_000))
    entitlements: Mapping[str, tuple[str, ...]] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        if self.keystore not in ("auto", "keyring", "file", "password"):
            raise ConfigError("keyvault.keystore: must be auto, keyring, file or password")
        if self.anchor_dir:
            # Only the shape is checked here; where it is (outside the home, owned by us,
            # 0700) is checked against the real filesystem when a service starts.
            anchors = Path(self.anchor_dir)
            if "\0" in self.anchor_dir or not anchors.is_absolute() or ".." in anchors.parts:
                raise ConfigError("keyvault.anchor_dir: must be an absolute path without '..' "
                                  "(a directory outside the mesh home)")
        for name, purposes in self.entitlements.items():
            if not NAME_RE.fullmatch(name):
                raise ConfigError(f"keyvault.entitlements.{name}: not a valid identity name")
            for purpose in purposes:
                if purpose not in PURPOSES:
                    raise ConfigError(f"keyvault.entitlements.{name}: unknown purpose {purpose!r}")


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One alert rule: it fires when the matching records of one subject add up to ``threshold``
    within ``window_s`` seconds (for ``large_read``, the bytes read; otherwise records or counts)."""

    window_s: float = field(default=300.0, metadata=_range(1, 7 * 86_400))
    threshold: int = field(default=5, metadata=_range(1, 1 << 50))
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class AlertRules:
    """``[audit.rules]``: one table per rule (services/audit/alerts.py says what each matches)."""

    failed_logins_account: AlertRule = AlertRule(300.0, 5)
    failed_logins_source: AlertRule = AlertRule(300.0, 20)
    unknown_certs: AlertRule = AlertRule(60.0, 20)
    rate_limited: AlertRule = AlertRule(60.0, 100)
    crash_loop: AlertRule = AlertRule(600.0, 3)
    large_read: AlertRule = AlertRule(3600.0, 256 << 20)
    repeated_denies: AlertRule = AlertRule(60.0, 10)
    credential_theft: AlertRule = AlertRule(86400.0, 1)
    witness_mismatch: AlertRule = AlertRule(86400.0, 1)
    pairing_failures: AlertRule = AlertRule(60.0, 5)
    plugin_faults: AlertRule = AlertRule(3600.0, 1)
    verify_failed: AlertRule = AlertRule(86400.0, 1)


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """``[audit]``: the audit service's anomaly alerts."""

    rules: AlertRules = AlertRules()
    #: Open alerts kept at most (the oldest is dropped from the open list, never from the log).
    max_open_alerts: int = field(default=1000, metadata=_range(1, 1_000_000))
    #: A start checks every page's HMAC when the database (with its WAL) is at most this many MiB
    #: (about 0.7 s for 170 MiB, a million records, here); a larger one has its pages checked by the
    #: background pass, first, so a start stays bounded whatever the log's size. 0: never at start.
    start_page_check_mib: int = field(default=256, metadata=_range(0, 1_000_000))


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """The whole of mesh.toml."""

    version: int = CONFIG_VERSION
    broker: BrokerConfig = BrokerConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    limits: LimitsConfig = LimitsConfig()
    acl: AclConfig = AclConfig()
    argon2: Argon2Config = Argon2Config()
    keyvault: KeyvaultConfig = KeyvaultConfig()
    audit: AuditConfig = AuditConfig()
    authn: AuthnConfig = AuthnConfig()
    authz: AuthzConfig = AuthzConfig()
    pairing: PairingConfig = PairingConfig()
    plugins: PluginsConfig = PluginsConfig()
    #: ``[services.<name>]``: every process of the mesh, declared once (:mod:`._declarations`).
    services: Mapping[str, ServiceDeclaration] = field(default_factory=_empty)

    def __post_init__(self) -> None:
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"version: this curvemesh reads version {CONFIG_VERSION}, not {self.version}")
        check_names(self.services)
        for name, declaration in self.services.items():
            for purpose in declaration.keys:
                if purpose not in PURPOSES:
                    raise ConfigError(f"services.{name}.keys: unknown purpose {purpose!r}; purposes are "
                                      f"{', '.join(PURPOSES)}")
        for section, table in (("acl.role", self.acl.role), ("limits.role", self.limits.role)):
            for role in table:
                if role not in ROLES:
                    raise ConfigError(f"{section}.{role}: unknown role; roles are {', '.join(sorted(ROLES))}")
        for section, table in (("acl.identity", self.acl.identity), ("limits.identity", self.limits.identity)):
            for name in table:
                if not NAME_RE.fullmatch(name):
                    raise ConfigError(f"{section}.{name}: not a valid identity name")
        for where, rules in (("role", self.acl.role), ("identity", self.acl.identity)):
            for who, rule in rules.items():
                for pattern in rule.call:
                    if not CALL_RE.match(pattern) or pattern == "*.*":
                        raise ConfigError(f"acl.{where}.{who}.call: {pattern!r} is not svc.method, svc.*, "
                                          "svc.group.* or *.method")
                for key in ("publish", "subscribe"):
                    for topic in getattr(rule, key):
                        if not TOPIC_RE.match(topic):
                            raise ConfigError(f"acl.{where}.{who}.{key}: {topic!r} is not a topic prefix or '*'")
        # The ACL and the entitlements in force are the explicit rules plus what the declarations
        # imply; both are derived here, once, so every reader of the configuration (the broker,
        # keyvault, meshctl) sees the same rights. Deriving twice adds nothing (a union).
        object.__setattr__(self, "acl", derive_acl(self.acl, self.services))
        entitlements = derive_entitlements(self.keyvault.entitlements, self.services)
        object.__setattr__(self, "keyvault", dataclasses.replace(self.keyvault, entitlements=entitlements))

    def identities(self) -> dict[str, str]:
        """Every declared identity (the broker excepted) with the role its certificate carries."""
        return identities(self.services)

    def processes(self) -> list[str]:
        """The declared processes supervisord runs, in start order."""
        return processes(self.services)


def _convert(tp: Any, value: Any, where: str, base: Any = None) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a table")
        return _build(tp, value, where, base)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list")
        (item_tp, _) = typing.get_args(tp)
        return tuple(_convert(item_tp, item, f"{where}[{i}]") for i, item in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a table")
        _, item_tp = typing.get_args(tp)
        return types.MappingProxyType({k: _convert(item_tp, v, f"{where}.{k}") for k, v in value.items()})
    if tp is float:
        if type(value) not in (int, float):
            raise ConfigError(f"{where}: must be a number")
        return float(value)
    if type(value) is not tp:
        raise ConfigError(f"{where}: must be of type {tp.__name__}")
    return value


@functools.cache
def _schema(cls: Any) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """The field types and fields of a section class, worked out once per class: the annotations are
    strings (``from __future__ import annotations``), and evaluating them again for every table of
    every parse was most of the time a parse took (every process and meshctl command parses)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _build(cls: Any, data: dict[str, Any], prefix: str, base: Any = None) -> Any:
    """Build ``cls`` from a TOML table. Keys the table leaves out keep the values of
    ``base`` (the enclosing default, e.g. the master Argon2 profile), not the class's
    generic defaults: a partial table never silently weakens a setting."""
    hints, fields = _schema(cls)
    kwargs: dict[str, Any] = {}
    if base is not None:
        kwargs = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls)}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else key
        spec = fields.get(key)
        if spec is None:
            raise ConfigError(f"{where}: unknown key")
        default = spec.default if spec.default is not dataclasses.MISSING else None
        converted = _convert(hints[key], value, where, default if dataclasses.is_dataclass(default) else None)
        lo, hi = spec.metadata.get("min"), spec.metadata.get("max")
        if lo is not None and hi is not None and not lo <= converted <= hi:
            raise ConfigError(f"{where}: {converted} is outside {lo}..{hi}")
        kwargs[key] = converted
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if prefix and not exc.message.startswith(prefix):
            raise ConfigError(f"{prefix}.{exc.message}") from None
        raise


def parse_config(text: str, source: str = "mesh.toml") -> MeshConfig:
    """Parse mesh.toml text; raise :class:`ConfigError` naming the source and key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    return build_config(data, source)


def build_config(data: dict[str, Any], source: str) -> MeshConfig:
    """Build the configuration from parsed TOML ``data`` (strictly, as :func:`parse_config`);
    errors name ``source`` and the key."""
    try:
        config: MeshConfig = _build(MeshConfig, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc.message}") from None
    return config


DEFAULT_CONFIG_PATH: Final = Path(__file__).resolve().parent.parent / "mesh.toml"


def config_path(home: Path | None) -> Path:
    """The base layer of the configuration: ``$CURVEMESH_CONFIG``, else ``<home>/mesh.toml``
    when it exists, else the repository's ``mesh.toml``. The home's ``mesh.d/*.toml``
    fragments merge over it (:mod:`._layers`, :func:`shared.mesh_config`)."""
    explicit = os.environ.get("CURVEMESH_CONFIG")
    if explicit:
        return Path(explicit)
    if home is not None and (home / "mesh.toml").is_file():
        return home / "mesh.toml"
    return DEFAULT_CONFIG_PATH


def load_config(path: Path) -> MeshConfig:
    """Read and parse the configuration file at ``path``."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    return parse_config(text, str(path))

"""curvemesh's shared runtime: what every service, the broker and the tools build on.

The public API is what this package exports and its public modules; the ``_modules`` behind
them are private (tests/test_import_graph.py fails when code outside ``shared/`` imports one):

- ``shared``: services (:class:`Service`, :func:`handler`, :class:`ServiceRunner`), clients,
  the wire codec, configuration, errors, logging, the audit recorder, shipper and spool;
- :mod:`shared.certs`: CURVE certificates; :mod:`shared.provision`: a home's keypairs;
- :mod:`shared.crypto`: sealing, key derivation and wiping (the recipes), over
  :mod:`shared.hazmat` (raw primitives, for building formats only);
- :mod:`shared.keystore`: where anchors and other secrets are kept between runs;
- :mod:`shared.keeper`: the unseal and event loops of a service that holds keys;
- :mod:`shared.files`: atomic and exclusive private file writes;
- :mod:`shared.transparency`: checking the audit log from outside (RFC 9162 proofs, signed
  checkpoints) and a paired device's witness of it;
- :mod:`shared.pake`: device pairing (codes, offers, frames, the SPAKE2 state machines);
- :mod:`shared.device`: a device's side (pairing, its profile, detached connections);
- :mod:`shared.plugins`: signed plugin packages (manifest, content hash, signatures, staging);
- :mod:`shared.passwords`: password strength; :mod:`shared.testing`: test helpers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Final

# Every name below is imported the first time it is used, not when ``shared`` is: a program that
# needs only the configuration (meshctl --help, a completion) must not pay for zmq, asyncio,
# structlog and the crypto stack at start (issue 13). The names and what they are stay the same;
# type checkers see the plain imports.
if TYPE_CHECKING:
    from . import certs
    from ._acl import Grant, compile_grant
    from ._argon2 import Argon2Profile
    from ._certs import Certificate, KeyPair
    from ._client import Event, MeshClient, Subscription
    from ._codec import (
        PROTOCOL_VERSION,
        decode_body,
        decode_delivered,
        decode_header,
        encode_body,
        encode_header,
        error_text,
        split_target,
    )
    from ._config import (
        DEFAULT_CONFIG_PATH,
        AlertRule,
        AlertRules,
        Argon2Config,
        AuditConfig,
        BrokerConfig,
        KeyvaultConfig,
        LimitsConfig,
        MeshConfig,
        RateLimit,
        RuntimeConfig,
        build_config,
        config_path,
        load_config,
        parse_config,
    )
    from ._config_authn import AuthnConfig
    from ._config_authz import AuthzConfig
    from ._config_pairing import PairingConfig
    from ._config_plugins import PluginsConfig
    from ._connection import Connection
    from ._declarations import BROKER, BROKER_ADDRESS, AclConfig, AclRule, ServiceDeclaration
    from ._errors import (
        WIRE_CODES,
        BadRequest,
        CertificateError,
        ConfigError,
        Conflict,
        Forbidden,
        HandshakeError,
        Internal,
        MeshError,
        NotFound,
        RateLimited,
        ReauthRequired,
        Sealed,
        StateError,
        Timeout,
        Unauthenticated,
        Unavailable,
        error_from_wire,
    )
    from ._home import ENV_HOME, MeshHome
    from ._layers import BUILT_IN as CONFIG_BUILT_IN
    from ._layers import Layers as ConfigLayers
    from ._layers import config_files, mesh_config
    from ._layers import merge as merge_config
    from ._layers import provenance as config_provenance
    from ._layers import read_layers as config_layers
    from ._layers import settings as config_settings
    from ._logging import configure_logging, declare_sensitive, defer_logging, redact
    from ._oneshot import OneShot, call_once
    from ._purposes import PURPOSES
    from ._ratelimit import TokenBucket
    from ._recorder import AuditRecorder
    from ._runtime import ServiceRunner, connect_patiently, run_service, serve
    from ._schema import Message, message, sensitive_fields
    from ._service import (
        DEGRADED,
        FAILED,
        READINESS_STATES,
        READY,
        SEALED,
        HandlerSpec,
        NoFields,
        Readiness,
        RequestContext,
        Service,
        handler,
        handler_table,
    )
    from ._shipper import AuditShipper, append_record, append_records
    from ._spool import Spool, SyncJob
    from ._sqlcipher import damaged_pages, integrity_problems

#: The private module each exported name comes from (tests/test_import_graph.py checks this
#: covers ``__all__`` exactly and that every name resolves).
_EXPORTS: Final[dict[str, tuple[str, ...]]] = {
    "._acl": ("Grant", "compile_grant"),
    "._argon2": ("Argon2Profile",),
    "._certs": ("Certificate", "KeyPair"),
    "._client": ("Event", "MeshClient", "Subscription"),
    "._codec": (
        "PROTOCOL_VERSION", "decode_body", "decode_delivered", "decode_header", "encode_body", "encode_header",
        "error_text", "split_target",
    ),
    "._config_authn": ("AuthnConfig",),
    "._config_authz": ("AuthzConfig",),
    "._config_pairing": ("PairingConfig",),
    "._config_plugins": ("PluginsConfig",),
    "._config": (
        "DEFAULT_CONFIG_PATH", "AlertRule", "AlertRules", "Argon2Config", "AuditConfig", "BrokerConfig",
        "KeyvaultConfig", "LimitsConfig", "MeshConfig", "RateLimit", "RuntimeConfig", "build_config", "config_path",
        "load_config", "parse_config",
    ),
    "._connection": ("Connection",),
    "._declarations": ("BROKER", "BROKER_ADDRESS", "AclConfig", "AclRule", "ServiceDeclaration"),
    "._errors": (
        "WIRE_CODES", "BadRequest", "CertificateError", "ConfigError", "Conflict", "Forbidden", "HandshakeError",
        "Internal", "MeshError", "NotFound", "RateLimited", "ReauthRequired", "Sealed", "StateError", "Timeout",
        "Unauthenticated", "Unavailable", "error_from_wire",
    ),
    "._home": ("ENV_HOME", "MeshHome"),
    "._layers": ("config_files", "mesh_config"),
    "._logging": ("configure_logging", "declare_sensitive", "defer_logging", "redact"),
    "._oneshot": ("OneShot", "call_once"),
    "._purposes": ("PURPOSES",),
    "._ratelimit": ("TokenBucket",),
    "._runtime": ("ServiceRunner", "connect_patiently", "run_service", "serve"),
    "._schema": ("Message", "message", "sensitive_fields"),
    "._service": (
        "DEGRADED", "FAILED", "READINESS_STATES", "READY", "SEALED", "HandlerSpec", "NoFields", "Readiness",
        "RequestContext", "Service", "handler", "handler_table",
    ),
    "._recorder": ("AuditRecorder",),
    "._shipper": ("AuditShipper", "append_record", "append_records"),
    "._spool": ("Spool", "SyncJob"),
    "._sqlcipher": ("damaged_pages", "integrity_problems"),
}
#: Exported under another name than the module's own: exported name -> (module, name there).
_RENAMED: Final[dict[str, tuple[str, str]]] = {
    "CONFIG_BUILT_IN": ("._layers", "BUILT_IN"),
    "ConfigLayers": ("._layers", "Layers"),
    "merge_config": ("._layers", "merge"),
    "config_provenance": ("._layers", "provenance"),
    "config_layers": ("._layers", "read_layers"),
    "config_settings": ("._layers", "settings"),
}
#: Public submodules reachable as attributes without their own import (``shared.certs``).
_SUBMODULES: Final = ("certs",)
_WHERE: Final[dict[str, tuple[str, str]]] = {
    **{name: (module, name) for module, names in _EXPORTS.items() for name in names}, **_RENAMED}


# Hidden from type checkers: for them a module __getattr__ would make every misspelt name valid.
if not TYPE_CHECKING:
    def __getattr__(name: str) -> Any:
        """Import the module behind ``name`` on first use and keep the value (PEP 562)."""
        if name in _SUBMODULES:
            value: Any = importlib.import_module(f"{__name__}.{name}")
        elif name in _WHERE:
            module, attribute = _WHERE[name]
            value = getattr(importlib.import_module(module, __name__), attribute)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "PROTOCOL_VERSION", "WIRE_CODES", "ENV_HOME", "DEFAULT_CONFIG_PATH",
    "AclConfig", "AclRule", "AlertRule", "AlertRules", "AuditConfig",
    "Argon2Config", "Argon2Profile", "AuthnConfig", "AuthzConfig", "BrokerConfig", "KeyvaultConfig", "PURPOSES",
    "PairingConfig", "PluginsConfig", "LimitsConfig", "MeshConfig", "RateLimit", "RuntimeConfig", "ServiceDeclaration",
    "BROKER", "BROKER_ADDRESS",
    "BadRequest", "CertificateError", "ConfigError", "Conflict", "Forbidden", "HandshakeError",
    "Internal", "MeshError", "NotFound", "RateLimited", "ReauthRequired", "Sealed", "StateError", "Timeout",
    "Unauthenticated", "Unavailable",
    "AuditRecorder", "AuditShipper", "Certificate", "Grant", "KeyPair", "MeshHome", "Spool", "SyncJob", "TokenBucket",
    "Message", "message", "Event", "MeshClient", "Subscription", "Connection", "OneShot", "call_once",
    "configure_logging", "defer_logging", "declare_sensitive", "redact",
    "ServiceRunner", "connect_patiently", "run_service", "serve",
    "HandlerSpec", "NoFields", "RequestContext", "Service", "handler", "handler_table", "sensitive_fields",
    "DEGRADED", "FAILED", "READINESS_STATES", "READY", "SEALED", "Readiness",
    "append_record", "append_records", "damaged_pages", "integrity_problems",
    "certs", "compile_grant", "config_files", "config_layers", "config_path", "config_provenance", "mesh_config",
    "build_config", "config_settings",
    "ConfigLayers", "CONFIG_BUILT_IN", "merge_config",
    "decode_body", "decode_delivered", "decode_header",
    "encode_body", "encode_header", "error_text", "error_from_wire", "load_config", "parse_config", "split_target",
]

"""curvemesh's shared runtime: what every service, the broker and the tools build on.

The public API is what this package exports and its public modules; the ``_modules`` behind
them are private (tests/test_import_graph.py fails when code outside ``shared/`` imports one):

- ``shared``: services (:class:`Service`, :func:`handler`, :class:`ServiceRunner`), clients,
  the wire codec, configuration, errors, logging, the audit shipper and spool;
- :mod:`shared.certs`: CURVE certificates; :mod:`shared.provision`: a home's keypairs;
- :mod:`shared.crypto`: sealing, key derivation and wiping (the recipes), over
  :mod:`shared.hazmat` (raw primitives, for building formats only);
- :mod:`shared.keystore`: where anchors and other secrets are kept between runs;
- :mod:`shared.keeper`: the unseal and event loops of a service that holds keys;
- :mod:`shared.files`: atomic and exclusive private file writes;
- :mod:`shared.passwords`: password strength; :mod:`shared.testing`: test helpers.
"""

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
    PURPOSES,
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
from ._logging import configure_logging, declare_sensitive, redact
from ._ratelimit import TokenBucket
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
)
from ._shipper import AuditShipper, append_record, append_records
from ._spool import Spool
from ._sqlcipher import damaged_pages, integrity_problems

__all__ = [
    "PROTOCOL_VERSION", "WIRE_CODES", "ENV_HOME", "DEFAULT_CONFIG_PATH",
    "AclConfig", "AclRule", "AlertRule", "AlertRules", "AuditConfig",
    "Argon2Config", "Argon2Profile", "BrokerConfig", "KeyvaultConfig", "PURPOSES",
    "LimitsConfig", "MeshConfig", "RateLimit", "RuntimeConfig", "ServiceDeclaration", "BROKER", "BROKER_ADDRESS",
    "BadRequest", "CertificateError", "ConfigError", "Conflict", "Forbidden", "HandshakeError",
    "Internal", "MeshError", "NotFound", "RateLimited", "Sealed", "StateError", "Timeout", "Unauthenticated",
    "Unavailable",
    "AuditShipper", "Certificate", "Grant", "KeyPair", "MeshHome", "Spool", "TokenBucket",
    "Message", "message", "Event", "MeshClient", "Subscription", "Connection",
    "configure_logging", "declare_sensitive", "redact", "ServiceRunner", "connect_patiently", "run_service", "serve",
    "HandlerSpec", "NoFields", "RequestContext", "Service", "handler", "sensitive_fields",
    "DEGRADED", "FAILED", "READINESS_STATES", "READY", "SEALED", "Readiness",
    "append_record", "append_records", "damaged_pages", "integrity_problems",
    "certs", "compile_grant", "config_files", "config_layers", "config_path", "config_provenance", "mesh_config",
    "build_config",
    "ConfigLayers", "CONFIG_BUILT_IN", "merge_config",
    "decode_body", "decode_delivered", "decode_header",
    "encode_body", "encode_header", "error_text", "error_from_wire", "load_config", "parse_config", "split_target",
]

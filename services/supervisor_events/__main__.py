"""``python -m services.supervisor_events``: the listener, run by supervisord until SIGTERM."""

from __future__ import annotations

import asyncio
import sys

import structlog

from shared import (
    CertificateError,
    ConfigError,
    HandshakeError,
    MeshHome,
    Spool,
    configure_logging,
    mesh_config,
)

from .protocol import ProtocolError
from .service import AUDIT_SPOOL_MAX_RECORDS, AUDIT_SPOOL_NAME, NAME, SPOOL_MAX_RECORDS, claim_stdout, run


def main() -> int:
    protocol_fd = claim_stdout()
    configure_logging(NAME)
    log = structlog.get_logger(NAME)
    try:
        home = MeshHome.from_env()
        config = mesh_config(home.root)
        home.ensure()
        spool = Spool(home.spool / f"{NAME}.spool", SPOOL_MAX_RECORDS)
        audit_spool = Spool(home.spool / AUDIT_SPOOL_NAME, AUDIT_SPOOL_MAX_RECORDS)
    except (ConfigError, CertificateError) as exc:
        log.error("cannot_start", error=exc.code, reason=exc.message)
        print(f"{NAME}: {exc.message}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(home, config, spool, protocol_fd, audit_spool))
    except (ConfigError, CertificateError, HandshakeError) as exc:
        log.error("cannot_start", error=exc.code, reason=exc.message)
        print(f"{NAME}: {exc.message}", file=sys.stderr)
        return 2
    except ProtocolError as exc:
        log.error("protocol_error", reason=str(exc))
        return 3
    finally:
        spool.close()
        audit_spool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m services.broker``: run the broker until SIGTERM or SIGINT."""

from __future__ import annotations

import signal
import sys

import structlog

from shared import CertificateError, ConfigError, MeshHome, configure_logging, mesh_config

from .core import Broker


def main() -> int:
    configure_logging("broker")
    log = structlog.get_logger("broker")
    try:
        home = MeshHome.from_env()
        broker = Broker(mesh_config(home.root), home)
        broker.bind()
    except (ConfigError, CertificateError, RuntimeError) as exc:
        reason = exc.message if isinstance(exc, (ConfigError, CertificateError)) else str(exc)
        log.error("cannot_start", reason=reason)
        print(f"broker: {reason}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: broker.stop())
    signal.signal(signal.SIGINT, lambda *_: broker.stop())
    broker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

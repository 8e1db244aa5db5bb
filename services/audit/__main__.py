"""``python -m services.audit``: run the audit service until SIGTERM."""

from shared import run_service

from .service import Audit

run_service(Audit)

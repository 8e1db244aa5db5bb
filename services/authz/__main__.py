"""``python -m services.authz``: run the authz service until SIGTERM."""

from shared import run_service

from .service import Authz

run_service(Authz)

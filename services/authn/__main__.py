"""``python -m services.authn``: run the authn service until SIGTERM."""

from shared import run_service

from .service import Authn

run_service(Authn)

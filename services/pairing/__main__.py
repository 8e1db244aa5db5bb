"""``python -m services.pairing``: run the pairing service until SIGTERM."""

from shared import run_service

from .service import Pairing

run_service(Pairing)

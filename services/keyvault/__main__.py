"""``python -m services.keyvault``: run the keyvault service until SIGTERM."""

from shared import run_service

from .service import Keyvault

run_service(Keyvault)

"""``python -m services.storage``: run the storage service until SIGTERM."""

from shared import run_service

from .service import Storage

run_service(Storage)

"""``python -m services.plugin_host``: run the plugin-host service until SIGTERM."""

from shared import run_service

from .service import PluginHost

run_service(PluginHost)

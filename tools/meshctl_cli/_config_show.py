"""``meshctl config show``: the configuration every process of the mesh runs with, merged from its
layers (the base file, then ``<home>/mesh.d/*.toml``), each value with the layer that set it.

It reads the same layers, with the same checks, as the processes do at start (``shared.mesh_config``),
so a fragment the mesh would refuse is refused here too, naming its file and key.
"""

from __future__ import annotations

import json
from typing import Any

from shared import ConfigError, MeshHome, config_layers, config_provenance

from ._output import CliError


def show(home: MeshHome) -> dict[str, Any]:
    """``{files: [base, fragments...], settings: [{key, value, source}]}``."""
    try:
        layers = config_layers(home.root)
        rows = config_provenance(layers)
    except ConfigError as exc:
        raise CliError(exc.message) from None
    return {"files": [str(p) for p in layers.files],
            "settings": [{"key": key, "value": value, "source": source} for key, value, source in rows]}


def render(result: dict[str, Any]) -> str:
    """``key = value`` in TOML spelling, one a line, each followed by where it came from."""
    lines = [f"# layers, merged in this order: {' + '.join(result['files'])}"]
    # Align the sources, except after the few long values (ACL lists) that would push them off screen.
    width = min(60, max((len(s["key"]) + 3 + len(_toml(s["value"])) for s in result["settings"]), default=0))
    for setting in result["settings"]:
        text = f"{setting['key']} = {_toml(setting['value'])}"
        lines.append(f"{text:<{width}}  # {setting['source']}")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    # JSON spells strings, numbers, booleans and lists of them the way TOML does.
    return json.dumps(value)

"""keyvault's entitlements follow the configuration files: a service added with its ``keys`` may fetch
them without a keyvault restart, a removed one loses them at its next fetch, and files that no
longer parse change nothing (the valid table in force stays)."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from services.keyvault.entitlements import Entitlements
from shared import mesh_config

BASE = '[services.storage]\nentry = "services.storage"\nkeys = ["sqlcipher"]\n'


def _home(tmp_path: Path) -> Path:
    root = tmp_path / "h"
    (root / "mesh.d").mkdir(parents=True, mode=0o700)
    (root / "mesh.toml").write_text(BASE)
    return root


def test_a_declaration_added_or_removed_changes_who_may_fetch(tmp_path: Path) -> None:
    root = _home(tmp_path)
    table = Entitlements(root, mesh_config(root), follow=True)
    assert table.of("storage") == ("sqlcipher",) and table.of("notes") == ()
    fragment = root / "mesh.d" / "service-notes.toml"
    fragment.write_text('[services.notes]\nentry = "/opt/notes.py:Notes"\nkeys = ["files"]\n')
    assert table.of("notes") == ("files",)
    fragment.unlink()
    assert table.of("notes") == ()
    assert table.of("storage") == ("sqlcipher",)


def test_files_that_no_longer_parse_change_nothing(tmp_path: Path) -> None:
    root = _home(tmp_path)
    (root / "mesh.d" / "service-notes.toml").write_text('[services.notes]\nentry = "/opt/n.py:N"\nkeys = ["files"]\n')
    table = Entitlements(root, mesh_config(root), follow=True)
    broken = root / "mesh.d" / "zz-broken.toml"
    broken.write_text('[services.evil]\nentry = "/opt/e.py:E"\nkeys = ["files", "master"]\n')
    with capture_logs() as logs:
        assert table.of("evil") == () and table.of("notes") == ("files",)
        assert table.of("notes") == ("files",)  # warned once per change of the files, not per fetch
    [warning] = [e for e in logs if e["event"] == "entitlements_kept"]
    assert "zz-broken.toml" in warning["reason"] and "master" in warning["reason"]
    broken.unlink()
    assert table.of("notes") == ("files",)


def test_a_configuration_handed_in_is_not_followed(tmp_path: Path) -> None:
    root = _home(tmp_path)
    table = Entitlements(root, mesh_config(root), follow=False)
    (root / "mesh.d" / "service-notes.toml").write_text('[services.notes]\nentry = "/opt/n.py:N"\nkeys = ["files"]\n')
    assert table.of("notes") == ()

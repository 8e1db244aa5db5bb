"""authz's own wire, for operators: the policies in force, validation, atomic reload, decisions on
trial, and a policy directory that does not load stopping authz at start (naming file and line)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.authz.policies import DEFAULT_DIR
from services.authz.service import Authz
from shared import ConfigError, MeshError, MeshHome, parse_config

from .people_rig import people_rig
from .processes import REPO

BROKEN = '@id("half")\npermit (principal, action, resource) when { context.nope };\n'


def policy_copy(root: Path) -> Path:
    target = root / "policy"
    shutil.copytree(DEFAULT_DIR, target)
    return target


async def test_reload_is_atomic_and_takes_effect_at_once(short_tmp: Path) -> None:
    directory = policy_copy(short_tmp)
    async with people_rig(short_tmp / "h", f'\n[authz]\npolicy_dir = "{directory}"\n') as rig:
        operator = rig["meshctl"]
        alice = await rig.add_user("alice")
        token = await rig.token("frontend", "alice")
        read = {"category": "settings", "token": token, "key": b"theme"}
        assert (await rig["frontend"].call("storage.kv.get", read, timeout=10))["found"] is False
        shown = await operator.call("authz.policy.show", timeout=10)
        assert shown["directory"] == str(directory) and shown["categories"]["health"] == "sensitive"
        assert {p["id"] for p in shown["policies"]} >= {"owner-data", "consented", "consent-required"}
        # A broken file: validate says where; reload refuses and the running set stays in force.
        (directory / "extra.cedar").write_text(BROKEN, "utf-8")
        checked = await operator.call("authz.policy.validate", {}, timeout=10)
        assert checked["valid"] is False and "extra.cedar:1: @id('half'): attribute `nope`" in checked["error"]
        with pytest.raises(MeshError) as refused:
            await operator.call("authz.policy.reload", timeout=10)
        assert refused.value.code == "BAD_REQUEST" and "running policies stay in force" in refused.value.message
        assert "extra.cedar:1" in refused.value.message
        assert (await rig["frontend"].call("storage.kv.get", read, timeout=10))["found"] is False
        # A good change: settings are off limits even for the owner's own services, from the next request.
        (directory / "extra.cedar").write_text('@id("no-settings")\n@reason("settings are read-only here")\n'
                                               'forbid (principal, action, resource == Category::"settings");\n',
                                               "utf-8")
        reloaded = await operator.call("authz.policy.reload", timeout=10)
        assert reloaded["previous"] == shown["digest"] and reloaded["digest"] != shown["digest"]
        with pytest.raises(MeshError) as denied:
            await rig["frontend"].call("storage.kv.get", read, timeout=10)
        assert denied.value.code == "FORBIDDEN" and "settings are read-only here" in denied.value.message
        trial = await operator.call("authz.policy.test", {"principal": "service:frontend", "action": "read",
                                                          "category": "settings", "owner": alice, "user": alice},
                                    timeout=10)
        assert trial["decision"] == "deny" and trial["deciding"] == [
            {"id": "no-settings", "effect": "forbid", "file": "extra.cedar", "line": 1}]
        # Only operators see and change policies.
        with pytest.raises(MeshError) as forbidden:
            await rig["frontend"].call("authz.policy.reload", timeout=10)
        assert forbidden.value.code == "FORBIDDEN"


def test_a_bad_policy_directory_stops_authz_at_start(short_tmp: Path) -> None:
    directory = policy_copy(short_tmp)
    (directory / "categories.toml").write_text('[categories.notes]\nsensitivity = "personal"\ncolour = "red"\n',
                                               "utf-8")
    config = parse_config(f'[authz]\npolicy_dir = "{directory}"\n')
    home = MeshHome(short_tmp / "home")
    with pytest.raises(ConfigError, match=r"categories\.toml:3: categories\.notes: unknown key 'colour'"):
        Authz(home, config)
    # The process itself: one line naming the file and line, exit status 2, before any connection.
    home.root.mkdir(mode=0o700)
    (home.root / "mesh.toml").write_text(f'version = 1\n[authz]\npolicy_dir = "{directory}"\n', "utf-8")
    env = {**os.environ, "CURVEMESH_HOME": str(home.root), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "services.authz"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2
    assert "categories.toml:3: categories.notes: unknown key 'colour'" in done.stderr


async def test_checks_need_an_unsealed_authz_and_a_service_caller(short_tmp: Path) -> None:
    async with people_rig(short_tmp / "h") as rig:
        alice = await rig.add_user("alice")
        ask = {"principal": "service:frontend", "action": "read", "category": "memories", "owner": alice,
               "user": alice}
        assert (await rig["frontend"].call("authz.check", ask, timeout=10))["allow"] is True
        for bad, field in (({**ask, "principal": "svc:x"}, "principal"), ({**ask, "action": "erase"}, "action")):
            with pytest.raises(MeshError) as raised:
                await rig["frontend"].call("authz.check", bad, timeout=10)
            assert raised.value.code == "BAD_REQUEST" and field in raised.value.message
        # A device may not ask authz about anyone (the mesh ACL exposes check to services only).
        with pytest.raises(MeshError) as refused:
            await rig["phone"].call("authz.check", ask, timeout=10)
        assert refused.value.code == "FORBIDDEN"
        # Sealed: no decision at all, rather than one without the grants and roles.
        await rig["meshctl"].call("keyvault.lock", timeout=10)
        assert rig.authz is not None
        await rig.authz.keeper.seal("test")
        with pytest.raises(MeshError) as sealed:
            await rig["frontend"].call("authz.check", ask, timeout=10)
        assert sealed.value.code == "SEALED"

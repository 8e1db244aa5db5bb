"""``[services.<name>]``: each process declared once, and everything derived from the declarations.

Bad declarations are refused naming the key; the project's declarations give exactly the rights the
hand-written ACL gave before (so the change of shape changed no right); a declaration's ``expose``
becomes call rules, its topics identity rules, its ``keys`` entitlements; explicit ``[acl]`` rules
add to what is derived; supervisord's programs are rendered from the declarations.
"""

from __future__ import annotations

import configparser

import pytest

from shared import DEFAULT_CONFIG_PATH, ConfigError, compile_grant, load_config, parse_config
from tools.meshctl_cli._programs import render

NOTES = """
[services.notes]
entry = "/opt/notes/notes.py:Notes"
keys = ["files"]
publish = ["notes."]
subscribe = ["security."]
[services.notes.expose]
"*" = ["operator"]
"get" = ["service", "reminders"]
"drafts.*" = ["reminders"]
"""


@pytest.mark.parametrize(("text", "key"), [
    ('[services.notes]\nentry = "notes main"', "services.notes.entry: 'notes main' is not package.module"),
    ('[services.notes]\nentry = "notes.py:Notes"', "services.notes.entry"),
    ('[services.notes]\nentry = "/opt/../etc/x.py:Notes"', "services.notes.entry"),
    ('[services.notes]\nentry = "/opt/notes.py:No tes"', "services.notes.entry"),
    ('[services.notes]\nentry = "/opt/%(ENV_X)s.py:Notes"', "services.notes.entry"),
    ('[services.notes]\nentry = "/opt/notes.py"', "services.notes.entry"),
    ('[services.notes]\npriority = 5', "services.notes.entry: missing"),
    ('[services.notes]\nentry = "x"\nrole = "root"', "services.notes.role: unknown role"),
    ('[services.notes]\nentry = "services.storage"', "services.notes.entry: 'services.storage' runs as whatever"),
    ('[services.notes]\nentry = "x"\nrole = "operator"', "services.notes.role: a declared process"),
    ('[services.notes]\nentry = "x"\nprocess = "daemon"', "services.notes.process"),
    ('[services.notes]\nentry = "x"\nprocess = "eventlistener"', "services.notes.events"),
    ('[services.notes]\nentry = "x"\nevents = ["TICK_5"]', "services.notes.events: only an event listener"),
    ('[services.notes]\nentry = "x"\npriority = 0', "services.notes.priority: 0 is outside"),
    ('[services.notes]\nentry = "notes"\nkeys = ["master"]', "services.notes.keys: unknown purpose 'master'"),
    ('[services.notes]\nentry = "x"\npublish = ["Bad topic"]', "services.notes.publish"),
    ('[services.notes]\nentry = "x"\nexpose = { "get" = ["Root!"] }', "services.notes.expose.get"),
    ('[services.notes]\nentry = "x"\nexpose = { "*.*" = ["operator"] }', "services.notes.expose"),
    ('[services.notes]\nentry = "x"\nexpose = { "get" = "operator" }', "services.notes.expose.get: must be a list"),
    ('[services.notes]\nentry = "x"\nsurprise = 1', "services.notes.surprise: unknown key"),
    ('[services.Notes]\nentry = "x"', "services.Notes: not a valid identity name"),
    ('[services.mesh]\nentry = "x"', "services.mesh: the name of the broker's own methods"),
    ('[services.broker]\nentry = "services.broker"\nkeys = ["files"]',
     "services.broker: the broker is the mesh's server"),
    ('[services.pad]\nprocess = "none"\nentry = "x"', "services.pad.entry: a declaration with process"),
])
def test_a_bad_declaration_is_refused_naming_its_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(text)
    assert key in refused.value.message, refused.value.message


def test_the_project_declarations_give_exactly_the_rights_the_hand_written_acl_gave() -> None:
    """The ACL as mesh.toml spelled it out before declarations (issue 12): same rights, to the rule,
    plus what authn's declaration adds (issue 14: people sign in through services and devices) and
    authz's (issue 15: services ask for decisions; services and devices carry people's consent;
    devices reach storage's data calls, where authz decides on people's data) and audit's for witnesses
    (services and devices fetch checkpoints with consistency proofs; only devices report a mismatch) and
    pairing's (issue 16: operators open windows and manage devices; pairing alone admits and revokes
    device certificates at the broker and ends a revoked device's sessions and grants) and plugin-host's
    (issue 17: operators manage plugins; services call their functions; no device reaches them)."""
    config = load_config(DEFAULT_CONFIG_PATH)
    operator = compile_grant(config.acl, "meshctl", "operator")
    assert operator.call_services == {"mesh", "keyvault", "audit", "storage", "authn", "authz", "pairing",
                                      "plugin-host"}
    assert operator.call_methods == {"health"} and operator.subscribe == ("*",) and operator.publish == ()
    authn_calls = {"authn.logout", "authn.verify"}
    service = compile_grant(config.acl, "notes", "service")
    assert service.calls == {"keyvault.keys.get", "keyvault.status", "audit.append", "audit.public_key",
                             "audit.checkpoint", "authn.keys", "authn.revocations", "authz.check", "plugin-host.call",
                             *authn_calls}
    data = ("storage.analytics.", "storage.files.", "storage.kv.", "storage.records.")
    assert service.call_groups == ("authn.login.", "authn.passkey.", "authn.token.", "authz.consent.", *data)
    device = compile_grant(config.acl, "phone", "device")
    assert device.calls == {*authn_calls, "audit.checkpoint", "audit.witness_report"}
    assert device.call_groups == ("authn.login.", "authn.passkey.", "authn.token.", "authz.consent.", *data)
    assert not device.call_services and not device.publish and not device.subscribe
    assert not service.call_services and not service.call_methods
    assert not service.publish and not service.subscribe
    topics = {name: (compile_grant(config.acl, name, "service").publish,
                     compile_grant(config.acl, name, "service").subscribe) for name in config.identities()}
    assert topics["keyvault"] == (("security.",), ())
    assert topics["audit"] == (("alerts.",), ("security.",))
    assert topics["storage"] == ((), ("security.", "authz."))
    assert topics["supervisor-events"] == (("supervisor.",), ())
    assert topics["authn"] == (("authn.",), ("security.",))
    assert topics["authz"] == (("authz.",), ("security.",))
    assert topics["pairing"] == (("pairing.",), ("security.",))
    assert topics["plugin-host"] == ((), ("security.",))
    pairing = compile_grant(config.acl, "pairing", "service")
    assert pairing.calls - service.calls == {"mesh.devices.enroll", "mesh.devices.revoke", "mesh.devices.seen",
                                             "authn.sessions.end_device", "authz.revoke_device"}
    # Only pairing, of the peers: no other service and no device.
    for other in (service, device):
        assert not any(other.may_call(*m.split(".", 1)) for m in ("mesh.devices.enroll", "mesh.devices.revoke",
                                                                 "authn.sessions.end_device", "authz.revoke_device"))
    # Plugins are managed by operators only; services call them; devices reach nothing of plugin-host.
    assert not any(device.may_call("plugin-host", m) for m in ("call", "plugins.install", "plugins.list"))
    assert not service.may_call("plugin-host", "plugins.install")
    assert dict(config.keyvault.entitlements) == {
        "storage": ("sqlcipher", "duckdb", "rocksdb", "files", "backups"), "audit": ("audit-hmac", "audit-signing"),
        "authn": ("token-signing", "accounts"), "authz": ("authz",), "pairing": ("pairing",),
        "plugin-host": ("plugins",)}
    assert config.identities() == {n: "service" for n in ("keyvault", "audit", "storage", "authn", "authz",
                                                          "pairing", "plugin-host", "supervisor-events")}
    assert config.processes() == ["broker", "keyvault", "supervisor-events", "audit", "storage", "authn", "authz",
                                  "pairing", "plugin-host"]


def test_a_declaration_becomes_call_topic_and_key_rules() -> None:
    config = parse_config(NOTES + '[acl.identity.reminders]\ncall = ["audit.append"]\n')
    operator = compile_grant(config.acl, "anyone", "operator")
    assert operator.may_call("notes", "get") and operator.may_call("notes", "drafts.open")
    other = compile_grant(config.acl, "calendar", "service")
    assert other.may_call("notes", "get") and not other.may_call("notes", "drafts.open")
    assert not other.may_call("notes", "delete")
    reminders = compile_grant(config.acl, "reminders", "device")
    # Its own declared rights and its explicit rule add up; nothing else comes with them.
    assert reminders.may_call("notes", "drafts.open") and reminders.may_call("audit", "append")
    assert not reminders.may_call("notes", "delete")
    notes = compile_grant(config.acl, "notes", "service")
    assert notes.may_publish("notes.saved") and not notes.may_publish("security.sealed")
    assert notes.may_subscribe("security.") and not notes.may_subscribe("notes.")
    assert config.keyvault.entitlements["notes"] == ("files",)
    assert config.identities() == {"notes": "service"}


def test_explicit_rules_add_to_declared_ones_and_deriving_twice_adds_nothing() -> None:
    import dataclasses

    config = parse_config(NOTES + '[keyvault.entitlements]\nnotes = ["files", "sqlcipher"]\n')
    assert config.keyvault.entitlements["notes"] == ("files", "sqlcipher")
    again = dataclasses.replace(config)  # __post_init__ runs again over the derived values
    assert again.acl == config.acl and again.keyvault.entitlements == config.keyvault.entitlements


def test_an_identity_without_a_process_is_declared_but_not_run() -> None:
    config = parse_config('[services.phone]\nprocess = "none"\nrole = "device"\n')
    assert config.identities() == {"phone": "device"} and config.processes() == []


def test_programs_are_rendered_from_the_declarations() -> None:
    config = load_config(DEFAULT_CONFIG_PATH)
    extra = parse_config(DEFAULT_CONFIG_PATH.read_text() + NOTES.replace("[services.notes]\n",
                                                                         "[services.notes]\npriority = 200\n", 1))
    sections = configparser.RawConfigParser()
    sections.read_string(render(extra))
    assert sections.sections() == [*(f"program:{n}" if n != "supervisor-events" else f"eventlistener:{n}"
                                     for n in config.processes()), "program:notes"]
    assert sections["program:broker"]["command"] == "%(ENV_CURVEMESH_PYTHON)s -m services.broker"
    assert sections["program:notes"]["command"] == \
        "%(ENV_CURVEMESH_PYTHON)s -m shared.run /opt/notes/notes.py:Notes --as notes"
    assert sections["program:notes"]["priority"] == "200"
    assert sections["eventlistener:supervisor-events"]["events"] == "PROCESS_STATE"
    assert sections["eventlistener:supervisor-events"]["stdout_logfile"] == "NONE"
    assert "program:authn" in sections and "program:meshctl" not in sections

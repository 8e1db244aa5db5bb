"""authz's pure core, table-driven: the shipped policies and hand-made directories through
:func:`decide` and the :class:`Authority` (real Cedar through cedarpy; no mesh, no clock)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.authz.authority import Authority
from services.authz.deciding import DEFAULT_DENY, Request
from services.authz.grants import Grant
from services.authz.policies import DEFAULT_DIR, PolicyError, load

OWNER, OTHER = "a1" * 16, "b2" * 16
#: A wall-clock time whose local hour is known (14:30 local on a Wednesday).
NOON = time.mktime((2026, 12, 9, 14, 30, 0, 0, 0, -1))
DECLARED = {"service:notes": ("user-data",), "service:backup": ("system",)}

TIME_WINDOW = '''
@id("quiet-hours")
@reason("no plugin reads between 22:00 and 07:00")
forbid (principal in Role::"plugin", action == Action::"read", resource)
when { context.hour >= 22 || context.hour < 7 };

@id("research-needs-purpose")
@reason("finance data is read for budgeting only")
forbid (principal, action == Action::"read", resource == Category::"finance")
unless { context.purpose == "budgeting" || context.on_behalf_of_owner };

@id("weekday-sync")
@reason("the sync service may read settings for its owner on weekdays")
permit (principal == Service::"sync", action == Action::"read", resource == Category::"settings")
when { context.on_behalf_of_owner && context.weekday < 5 };
'''


def directory(tmp_path: Path, extra: str = "") -> Path:
    target = tmp_path / "policy"
    shutil.copytree(DEFAULT_DIR, target)
    if extra:
        (target / "extra.cedar").write_text(extra, "utf-8")
    return target


def grant(grantee: str, categories: tuple[str, ...] = ("memories",), actions: tuple[str, ...] = ("read",),
          purpose: str = "reminders", expires: float = NOON + 3600, revoked: float | None = None,
          owner: str = OWNER) -> Grant:
    return Grant("g_1", owner, grantee, categories, actions, purpose, NOON - 60, expires, "sid", revoked)


def authority(path: Path = DEFAULT_DIR, grants: tuple[Grant, ...] = ()) -> Authority:
    made = Authority(load(path), DECLARED, 100)
    made.use_roles({"plugin:weather": ("plugin",), "device:phone": ("user-data",)})
    made.use_grants(list(grants))
    return made


def req(principal: str, action: str, category: str, owner: str = OWNER, user: str = OWNER,
        purpose: str = "") -> Request:
    kind, name = principal.split(":")
    return Request(kind, name, action, category, owner, user, purpose)


# principal, action, category, owner, user, purpose, grants, allowed, deciding policies (or reason)
CASES = [
    # allow: a user-data service acting for the owner.
    ("service:notes", "read", "memories", OWNER, OWNER, "", (), True, ("owner-data",)),
    ("service:notes", "delete", "notes", OWNER, OWNER, "", (), True, ("owner-data",)),
    # default deny: no role, or acting for nobody.
    ("service:stranger", "read", "memories", OWNER, OWNER, "", (), False, DEFAULT_DENY),
    ("service:backup", "read", "memories", OWNER, OWNER, "", (), False, DEFAULT_DENY),
    # on behalf of someone else: the owner's consent is required (built-in forbid).
    ("service:notes", "read", "memories", OWNER, OTHER, "", (), False, ("consent-required",)),
    ("service:notes", "read", "memories", OWNER, OTHER, "reminders", (grant(f"user:{OTHER}"),), True, ("consented",)),
    # a paired device needs consent even for its owner; with it, reads.
    ("device:phone", "read", "memories", OWNER, OWNER, "", (), False, ("consent-required",)),
    ("device:phone", "read", "memories", OWNER, OWNER, "reminders", (grant("device:phone"),), True,
     ("consented", "owner-data")),
    # consent for another purpose, category or action does not cover.
    ("device:phone", "read", "memories", OWNER, OWNER, "ads", (grant("device:phone"),), False, ("consent-required",)),
    ("device:phone", "read", "health", OWNER, OWNER, "reminders", (grant("device:phone"),), False,
     ("consent-required",)),
    ("device:phone", "write", "memories", OWNER, OWNER, "reminders", (grant("device:phone"),), False,
     ("consent-required",)),
    # expired and revoked grants cover nothing.
    ("plugin:weather", "read", "memories", OWNER, "", "reminders", (grant("plugin:weather", expires=NOON - 1),),
     False, ("consent-required",)),
    ("plugin:weather", "read", "memories", OWNER, "", "reminders", (grant("plugin:weather", revoked=NOON - 5),),
     False, ("consent-required",)),
    ("plugin:weather", "read", "memories", OWNER, "", "reminders", (grant("plugin:weather"),), True, ("consented",)),
    # a grant of another owner covers nothing here.
    ("plugin:weather", "read", "memories", OWNER, "", "reminders", (grant("plugin:weather", owner=OTHER),), False,
     ("consent-required",)),
    # deny overrides allow: consented, but plugins never delete.
    ("plugin:weather", "delete", "memories", OWNER, "", "reminders",
     (grant("plugin:weather", actions=("delete",)),), False, ("plugins-never-delete",)),
    # sensitivity and device trust: a paired device never writes a sensitive category.
    ("device:phone", "write", "health", OWNER, OWNER, "sync", (grant("device:phone", ("health",), ("write",), "sync"),),
     False, ("sensitive-from-this-machine",)),
    ("service:notes", "write", "health", OWNER, OWNER, "", (), True, ("owner-data",)),
    # an unknown category is a deny before any policy runs.
    ("service:notes", "read", "secrets", OWNER, OWNER, "", (), False, "unknown category 'secrets' (categories.toml)"),
    # operators reach no one's data.
    ("operator:meshctl", "read", "memories", OWNER, "", "", (), False, ("consent-required",)),
]


@pytest.mark.parametrize(("principal", "action", "category", "owner", "user", "purpose", "grants", "allowed",
                          "expected"), CASES)
def test_shipped_policies(principal: str, action: str, category: str, owner: str, user: str, purpose: str,
                          grants: tuple[Grant, ...], allowed: bool, expected: tuple[str, ...] | str) -> None:
    decision, _ = authority(grants=grants).check(req(principal, action, category, owner, user, purpose), NOON)
    assert decision.allowed is allowed
    if isinstance(expected, str):
        assert decision.reason == expected and decision.policies == ()
    else:
        assert decision.policies == tuple(sorted(expected))


@pytest.mark.parametrize(("principal", "category", "purpose", "hour", "weekday", "allowed", "policy"), [
    ("plugin:weather", "memories", "reminders", 14, 2, True, "consented"),
    ("plugin:weather", "memories", "reminders", 23, 2, False, "quiet-hours"),
    ("plugin:weather", "memories", "reminders", 6, 2, False, "quiet-hours"),
    ("plugin:weather", "finance", "reminders", 14, 2, False, "research-needs-purpose"),
    ("plugin:weather", "finance", "budgeting", 14, 2, True, "consented"),
    ("service:sync", "settings", "", 14, 2, True, "weekday-sync"),
    ("service:sync", "settings", "", 14, 6, False, ""),
])
def test_attribute_conditions(tmp_path: Path, principal: str, category: str, purpose: str, hour: int,
                              weekday: int, allowed: bool, policy: str) -> None:
    grants = (grant("plugin:weather", ("memories", "finance"), ("read",), purpose or "reminders"),)
    made = authority(directory(tmp_path, TIME_WINDOW), grants)
    # 2026-12-07 is a Monday: weekday w at the given local hour.
    now = time.mktime((2026, 12, 7 + weekday, hour, 15, 0, 0, 0, -1))
    user = OWNER if principal.startswith("service") else ""
    decision, _ = made.check(req(principal, "read", category, OWNER, user, purpose), now)
    assert decision.allowed is allowed, decision
    assert (policy in decision.policies) if policy else decision.policies == ()


def test_the_cache_answers_again_and_every_change_clears_it() -> None:
    made = authority(grants=(grant("plugin:weather"),))
    asked = req("plugin:weather", "read", "memories", OWNER, "", "reminders")
    first, cached = made.check(asked, NOON)
    assert first.allowed and not cached
    assert made.check(asked, NOON + 1) == (first, True)
    made.revoked(grant("plugin:weather", revoked=NOON + 2))
    assert made.check(asked, NOON + 3)[0].allowed is False          # the very next decision
    made.granted(grant("plugin:weather", expires=NOON + 100))
    assert made.check(asked, NOON + 4)[0].allowed is True
    # A cached allow does not outlive the grant it relied on.
    assert made.check(asked, NOON + 99)[1] is True
    assert made.check(asked, NOON + 100)[0].allowed is False
    # Roles: assigning and revoking change the next decision.
    owner_read = req("service:helper", "read", "memories")
    assert made.check(owner_read, NOON)[0].allowed is False
    made.use_roles({"service:helper": ("user-data",)})
    assert made.check(owner_read, NOON)[0].allowed is True
    made.use_roles({})
    assert made.check(owner_read, NOON)[0].allowed is False


def test_a_cached_decision_ends_with_its_hour(tmp_path: Path) -> None:
    made = authority(directory(tmp_path, TIME_WINDOW), (grant("plugin:weather", expires=NOON + 86400),))
    asked = req("plugin:weather", "read", "memories", OWNER, "", "reminders")
    evening = time.mktime((2026, 12, 9, 21, 59, 0, 0, 0, -1))
    assert made.check(asked, evening)[0].allowed is True
    assert made.check(asked, evening + 59)[1] is True           # still 21:59: from the cache
    late, cached = made.check(asked, evening + 60)              # 22:00: computed again
    assert late.allowed is False and late.policies == ("quiet-hours",) and not cached


@pytest.mark.parametrize(("file", "text", "expected"), [
    ("extra.cedar", 'permit (principal, action, resource);\n', "extra.cedar:1: every policy needs @id"),
    ("extra.cedar", '\n// note\n@id("x")\npermit (principal, action resource);\n', "extra.cedar:3: unexpected token"),
    ("extra.cedar", '@id("a")\npermit (principal, action, resource);\n\n@id("b")\n'
     'permit (principal, action, resource) when { context.nope };\n', "extra.cedar:4: @id('b'): attribute `nope`"),
    ("extra.cedar", '@id("owner-data")\npermit (principal, action, resource);\n', "extra.cedar:1: @id('owner-data') "
     "is already used at"),
    ("extra.cedar", '@id("t")\npermit (principal == ?principal, action, resource);\n', "templates"),
    ("categories.toml", '[categories.health]\nsensitivity = "sensitive"\nowner = "x"\n',
     "categories.toml:3: categories.health: unknown key 'owner'"),
    ("categories.toml", '[categories.health]\nsensitivity = "secret"\n',
     "categories.toml:2: categories.health.sensitivity"),
    ("categories.toml", 'version = 2\n[categories.health]\nsensitivity = "low"\n', "categories.toml:1: unknown key"),
    ("categories.toml", '[categories.Health]\nsensitivity = "low"\n', "categories.toml:1: category 'Health'"),
    ("schema.cedarschema", 'entity Role;\nentity User in [Role]\nentity X;\n', "schema.cedarschema:2:"),
])
def test_a_bad_directory_is_refused_with_file_and_line(tmp_path: Path, file: str, text: str, expected: str) -> None:
    target = directory(tmp_path)
    (target / file).write_text(text, "utf-8")
    with pytest.raises(PolicyError) as raised:
        load(target)
    assert expected in str(raised.value), str(raised.value)


def test_a_directory_without_policies_or_schema_is_refused(tmp_path: Path) -> None:
    target = directory(tmp_path)
    (target / "access.cedar").unlink()
    with pytest.raises(PolicyError, match=r"no \*\.cedar policy file"):
        load(target)
    (target / "schema.cedarschema").unlink()
    with pytest.raises(PolicyError, match=r"schema\.cedarschema: missing"):
        load(target)
    with pytest.raises(PolicyError, match="not a directory"):
        load(tmp_path / "absent")


def test_the_built_in_consent_rule_cannot_be_removed(tmp_path: Path) -> None:
    # An operator's directory that permits everything still cannot open data without consent.
    target = directory(tmp_path)
    (target / "access.cedar").write_text('@id("everything")\npermit (principal, action, resource);\n', "utf-8")
    made = authority(target)
    assert made.check(req("plugin:weather", "read", "memories", OWNER, ""), NOON)[0].policies == ("consent-required",)
    assert made.check(req("service:stranger", "read", "memories"), NOON)[0].allowed is True



NAMES = st.sampled_from(["notes", "weather", "phone", "stranger", "backup", "meshctl"])


@pytest.fixture(scope="module")
def authorities(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Authority]:
    """The shipped policies, and a directory whose only policy permits everything."""
    permissive = directory(tmp_path_factory.mktemp("permissive"))
    (permissive / "access.cedar").write_text('@id("everything")\npermit (principal, action, resource);\n', "utf-8")
    return {False: Authority(load(DEFAULT_DIR), {}, 100), True: Authority(load(permissive), {}, 100)}


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["service", "device", "plugin", "operator", "user"]), name=NAMES,
       action=st.sampled_from(["read", "write", "delete"]),
       category=st.sampled_from(["settings", "memories", "health", "finance", "unknown"]),
       owner=st.sampled_from([OWNER, OTHER]), user=st.sampled_from([OWNER, OTHER, ""]),
       purpose=st.sampled_from(["", "reminders", "sync"]),
       roles=st.lists(st.sampled_from(["user-data", "system", "plugin"]), max_size=3), everything=st.booleans())
def test_without_consent_no_one_but_the_owner_s_own_services_gets_in(
        authorities: dict[bool, Authority], kind: str, name: str, action: str, category: str, owner: str,
        user: str, purpose: str, roles: list[str], everything: bool) -> None:
    # Whatever roles a principal holds, and even under a directory that permits everything, a
    # plugin, a device, or anyone acting for no one or for someone other than the owner is denied
    # unless a grant covers the request (there is none here); an unknown category is always denied.
    # (An operator with the owner's own token acts for the owner, as a frontend does; authz gives
    # operators no roles, so only a directory that permits it lets them in.)
    made = authorities[everything]
    if kind == "user":
        name, user = user or OTHER, user or OTHER
    made.use_roles({f"{kind}:{name}": tuple(roles)})
    decision, _ = made.check(Request(kind, name, action, category, owner, user, purpose), NOON)
    if decision.allowed:
        assert category != "unknown"
        assert kind in ("service", "user", "operator") and user == owner
        assert everything or "user-data" in roles
    else:
        assert decision.reason

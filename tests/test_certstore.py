"""The broker's certificate store: reloads from scratch, pending keys bounded and throttled."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq
import zmq.utils.z85

from services.broker.certstore import CertStore
from shared import BadRequest, Conflict, NotFound, certs


def store_with(tmp_path: Path, *names: str, pending_max: int = 4, per_minute: int = 2) -> CertStore:
    store = CertStore(tmp_path / "certs", pending_max, per_minute)
    for name in names:
        certs.save_public(certs.generate(name, "service").certificate, store.root / "allowed" / f"{name}.key")
    store.reload()
    return store


def raw_key() -> bytes:
    return zmq.utils.z85.decode(zmq.curve_keypair()[0])


def test_reload_builds_the_allow_list_from_scratch(tmp_path: Path) -> None:
    store = store_with(tmp_path, "a", "b")
    assert set(store.snapshot.by_name) == {"a", "b"}
    (store.root / "allowed" / "a.key").unlink()
    assert store.changed()
    store.reload()
    assert set(store.snapshot.by_name) == {"b"} and not store.changed()


def test_two_certificates_claiming_one_name_are_both_refused(tmp_path: Path) -> None:
    store = store_with(tmp_path, "a")
    certs.save_public(certs.generate("a", "service").certificate, store.root / "allowed" / "a-copy.key")
    problems = store.reload()
    assert "a" not in store.snapshot.by_name
    assert any("more than one key" in p for _, p in problems)


def test_unknown_keys_are_deduplicated_bounded_and_throttled(tmp_path: Path) -> None:
    store = store_with(tmp_path, pending_max=3, per_minute=2)
    key = raw_key()
    assert store.record_unknown(key, "10.0.0.1", now=100.0)
    assert not store.record_unknown(key, "10.0.0.1", now=101.0)  # deduplicated
    assert store.pending[zmq.utils.z85.encode(key)].attempts == 2
    assert store.record_unknown(raw_key(), "10.0.0.1", now=102.0)
    assert not store.record_unknown(raw_key(), "10.0.0.1", now=103.0)  # per-address throttle
    assert store.pending_throttled == 1
    assert store.record_unknown(raw_key(), "10.0.0.2", now=104.0)
    assert not store.record_unknown(raw_key(), "10.0.0.3", now=105.0)  # bound reached
    assert store.pending_dropped == 1 and len(store.pending) == 3
    assert store.record_unknown(raw_key(), "10.0.0.1", now=100.0 + 61) is False  # still bounded
    store.reload()  # pending keys persist across reloads (and restarts)
    assert len(store.pending) == 3


def test_accept_reject_revoke_lifecycle(tmp_path: Path) -> None:
    store = store_with(tmp_path, "a")
    first, second = raw_key(), raw_key()
    store.record_unknown(first, "x", 1.0)
    store.record_unknown(second, "y", 1.0)
    fp_first = certs.fingerprint(zmq.utils.z85.encode(first))
    with pytest.raises(Conflict, match="already taken"):
        store.accept(fp_first[:12], "a", "device")
    cert = store.accept(fp_first[:12], "phone", "device")
    assert store.snapshot.by_name["phone"] == cert and not store.pending.get(cert.public_key)
    store.reject(certs.fingerprint(zmq.utils.z85.encode(second)))
    assert not store.record_unknown(second, "y", 2.0)  # rejected keys do not come back as pending
    store.revoke("phone")
    assert "phone" not in store.snapshot.by_name and cert.public_key in store.revoked
    # Putting the file back does not re-admit a revoked key.
    certs.save_public(cert, store.root / "allowed" / "phone.key")
    store.reload()
    assert "phone" not in store.snapshot.by_name
    with pytest.raises(NotFound):
        store.find_key("nobody")


def test_unrevoke_restores_name_and_role_and_never_takes_a_name_in_use(tmp_path: Path) -> None:
    store = store_with(tmp_path)
    old = certs.generate("phone", "device").certificate
    certs.save_public(old, store.root / "allowed" / "phone.key")
    store.reload()
    store.revoke("phone")
    assert store.find_key("phone") == ("revoked", old.public_key)  # a revoked name still resolves
    newer = certs.generate("phone", "device").certificate
    certs.save_public(newer, store.root / "allowed" / "phone.key")
    store.reload()
    # Two keys under one name would both be refused: the old one cannot come back while the name is held.
    with pytest.raises(Conflict, match="now held by another key"):
        store.unrevoke(old.fingerprint)
    assert store.snapshot.by_name["phone"] == newer and old.public_key in store.revoked
    store.revoke("phone")
    with pytest.raises(BadRequest, match="more than one revoked key"):
        store.unrevoke("phone")
    assert store.unrevoke(old.fingerprint[:12]) == old
    assert store.snapshot.by_name["phone"] == old and old.public_key not in store.revoked
    assert (store.root / "allowed" / "phone.key").is_file()
    assert not (store.root / "revoked" / f"{old.fingerprint}.key").exists()


def test_unrevoke_interrupted_after_writing_the_allow_list_keeps_the_key_refused_and_finishes_again(
        tmp_path: Path) -> None:
    store = store_with(tmp_path, "a")
    cert = store.snapshot.by_name["a"]
    store.revoke("a")
    # What a crash between the two writes leaves: the allow-list file back, the revocation still there.
    certs.save_public(cert, store.root / "allowed" / "a.key")
    store.reload()
    assert "a" not in store.snapshot.by_name
    assert store.unrevoke("a") == cert and store.snapshot.by_name["a"] == cert
    store.revoke("a")
    with pytest.raises(NotFound, match=r"that key is revoked; to let it back in, run meshctl certs unrevoke a$"):
        store.accept("a", "a", "service")

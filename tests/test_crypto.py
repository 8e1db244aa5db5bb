"""Cryptographic recipes and primitives: known answers, tamper detection, key hygiene."""

from __future__ import annotations

import pytest
from cryptography_vectors import open_vector_file

from shared import Argon2Config, Argon2Profile, ConfigError, hazmat
from shared.crypto import (
    KEY_BYTES,
    SEAL_OVERHEAD,
    IntegrityError,
    KeyedHash,
    Sealer,
    check_profile,
    derive_from_password,
    derive_subkey,
    open_sealed,
    random_key,
    seal,
    wipe,
)

TINY = Argon2Profile(memory_kib=8, iterations=1, parallelism=1)
SALT = bytes(range(16))


def _load_vectors(name: str) -> list[dict[str, str]]:
    """Parse a NIST-style vector file from cryptography_vectors: ``COUNT = n`` starts a case."""
    cases: list[dict[str, str]] = []
    with open_vector_file(name, "r") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = (part.strip() for part in line.partition("="))
            if key == "COUNT":
                cases.append({})
            else:
                cases[-1][key] = value
    assert cases, f"no vectors in {name}"
    return cases


def _optional(case: dict[str, str], key: str) -> bytes | None:
    return bytes.fromhex(case[key]) if key in case else None


# -- known answers -------------------------------------------------------------------

ARGON2ID_VECTORS = _load_vectors("KDF/argon2id.txt")
HKDF_VECTORS = _load_vectors("KDF/rfc-5869-HKDF-SHA256.txt") + _load_vectors("KDF/hkdf-generated.txt")


def test_vector_files_hold_the_rfc_cases() -> None:
    # The RFC 9106 case with secret and associated data is the one that proves both are wired.
    rfc9106 = ARGON2ID_VECTORS[0]
    assert rfc9106["secret"] and rfc9106["ad"]
    assert rfc9106["output"] == "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"
    assert len([c for c in HKDF_VECTORS if c["Hash"] == "SHA-256"]) == len(HKDF_VECTORS) >= 3


@pytest.mark.parametrize("case", ARGON2ID_VECTORS, ids=lambda c: f"m={c['memcost']},t={c['iter']},p={c['lanes']}")
def test_argon2id_known_answers(case: dict[str, str]) -> None:
    expected = bytes.fromhex(case["output"])
    out = hazmat.argon2id(
        bytes.fromhex(case.get("pass", "")),
        salt=bytes.fromhex(case["salt"]),
        length=int(case["length"]),
        iterations=int(case["iter"]),
        lanes=int(case["lanes"]),
        memory_kib=int(case["memcost"]),
        secret=_optional(case, "secret"),
        ad=_optional(case, "ad"),
    )
    assert isinstance(out, bytearray)
    assert out == expected


@pytest.mark.parametrize("case", HKDF_VECTORS, ids=lambda c: f"L={c['L']}")
def test_hkdf_sha256_known_answers(case: dict[str, str]) -> None:
    out = hazmat.hkdf_sha256(
        bytes.fromhex(case["IKM"]),
        salt=bytes.fromhex(case["salt"]),
        info=bytes.fromhex(case["info"]),
        length=int(case["L"]),
    )
    assert isinstance(out, bytearray)
    assert out == bytes.fromhex(case["OKM"])


def test_hkdf_sha256_without_salt_equals_empty_salt() -> None:
    # derive_subkey passes salt=None; RFC 5869 makes that the same as an empty salt.
    case = HKDF_VECTORS[2]
    assert case["salt"] == ""
    assert hazmat.hkdf_sha256(bytes.fromhex(case["IKM"]), salt=None, info=b"", length=42) == bytes.fromhex(case["OKM"])


def test_hazmat_aes256gcm_refuses_other_key_and_nonce_sizes() -> None:
    for key, nonce in ((bytes(16), bytes(12)), (bytes(24), bytes(12)), (bytes(32), bytes(16)), (bytes(32), bytes(8))):
        with pytest.raises(ValueError, match="AES-256-GCM needs"):
            hazmat.aes256gcm_encrypt(key, nonce, b"x", b"")
        with pytest.raises(ValueError, match="AES-256-GCM needs"):
            hazmat.aes256gcm_decrypt(key, nonce, bytes(17), b"")


def test_hazmat_bytes_eq() -> None:
    assert hazmat.bytes_eq(b"abc", bytearray(b"abc"))
    assert not hazmat.bytes_eq(b"abc", b"abd")
    assert not hazmat.bytes_eq(b"abc", b"abcd")


# -- seal / open_sealed ----------------------------------------------------------------

KEY = bytearray(range(32))
AAD = b"storage/records:user-42"
PLAINTEXT = b"the user's diary entry"


def test_random_key_is_a_fresh_bytearray() -> None:
    a, b = random_key(), random_key()
    assert isinstance(a, bytearray) and len(a) == KEY_BYTES == 32
    assert a != b


def test_seal_round_trip_and_format() -> None:
    blob = seal(KEY, PLAINTEXT, AAD)
    assert blob[0] == 0x01
    assert len(blob) == len(PLAINTEXT) + SEAL_OVERHEAD == len(PLAINTEXT) + 1 + 12 + 16
    assert PLAINTEXT not in blob
    assert open_sealed(KEY, blob, AAD) == PLAINTEXT
    assert open_sealed(bytes(KEY), blob, AAD) == PLAINTEXT
    assert open_sealed(KEY, seal(KEY, b"", b""), b"") == b""


def test_version_byte_is_bound_into_the_aad() -> None:
    blob = seal(KEY, PLAINTEXT, AAD)
    nonce, ciphertext = blob[1:13], blob[13:]
    assert hazmat.aes256gcm_decrypt(KEY, nonce, ciphertext, b"\x01" + AAD) == PLAINTEXT
    with pytest.raises(hazmat.InvalidTag):
        hazmat.aes256gcm_decrypt(KEY, nonce, ciphertext, AAD)


def test_nonces_differ_between_seals() -> None:
    blobs = [seal(KEY, PLAINTEXT, AAD) for _ in range(64)]
    assert len({blob[1:13] for blob in blobs}) == 64
    assert len(set(blobs)) == 64


def test_open_refuses_wrong_key() -> None:
    blob = seal(KEY, PLAINTEXT, AAD)
    other = bytearray(KEY)
    other[-1] ^= 1
    with pytest.raises(IntegrityError, match="tampered with, or the key"):
        open_sealed(other, blob, AAD)
    with pytest.raises(IntegrityError):
        open_sealed(random_key(), blob, AAD)


@pytest.mark.parametrize("aad", [b"", AAD + b"x", AAD[:-1], b"storage/records:user-43"])
def test_open_refuses_wrong_aad(aad: bytes) -> None:
    with pytest.raises(IntegrityError):
        open_sealed(KEY, seal(KEY, PLAINTEXT, AAD), aad)


def test_open_refuses_any_flipped_bit() -> None:
    blob = seal(KEY, PLAINTEXT, AAD)
    for bit in range(len(blob) * 8):
        tampered = bytearray(blob)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(IntegrityError):
            open_sealed(KEY, bytes(tampered), AAD)


def test_open_refuses_any_truncation_or_extension() -> None:
    blob = seal(KEY, PLAINTEXT, AAD)
    for length in range(len(blob)):
        with pytest.raises(IntegrityError):
            open_sealed(KEY, blob[:length], AAD)
    with pytest.raises(IntegrityError, match="truncated"):
        open_sealed(KEY, blob[: SEAL_OVERHEAD - 1], AAD)
    with pytest.raises(IntegrityError):
        open_sealed(KEY, blob + b"\x00", AAD)


@pytest.mark.parametrize("version", [0x00, 0x02, 0x81, 0xFF])
def test_open_refuses_unknown_version(version: int) -> None:
    blob = bytearray(seal(KEY, PLAINTEXT, AAD))
    blob[0] = version
    with pytest.raises(IntegrityError, match="unknown format version"):
        open_sealed(KEY, bytes(blob), AAD)


def test_integrity_error_is_a_local_internal_mesh_error() -> None:
    from shared import MeshError

    assert issubclass(IntegrityError, MeshError)
    assert IntegrityError.code == "INTERNAL"


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_seal_and_open_refuse_keys_of_the_wrong_length(length: int) -> None:
    with pytest.raises(ValueError, match="key must be 32 bytes"):
        seal(bytes(length), PLAINTEXT, AAD)
    with pytest.raises(ValueError, match="key must be 32 bytes"):
        open_sealed(bytes(length), seal(KEY, PLAINTEXT, AAD), AAD)


def test_error_messages_never_carry_key_or_plaintext() -> None:
    # Recognisable canaries: printable so they would show in a message as text or repr.
    key = bytearray(b"KEYCANARY-" + b"k" * 22)
    plaintext = b"PLAINTEXT-CANARY-do-not-leak"
    blob = seal(key, plaintext, AAD)
    wrong_key = bytearray(b"KEYCANARY-" + b"w" * 22)
    flipped = bytearray(blob)
    flipped[20] ^= 0x40
    versioned = bytearray(blob)
    versioned[0] = 0x07
    failures: list[Exception] = []
    for k, b, aad in (
        (wrong_key, blob, AAD),
        (key, blob, AAD + b"!"),
        (key, bytes(flipped), AAD),
        (key, blob[:10], AAD),
        (key, bytes(versioned), AAD),
    ):
        with pytest.raises(IntegrityError) as info:
            open_sealed(k, b, aad)
        failures.append(info.value)
        # Nothing chained that a traceback printer could show.
        assert info.value.__cause__ is None
        assert info.value.__context__ is None or info.value.__suppress_context__
    with pytest.raises(ValueError) as short_key:
        seal(key[:31], plaintext, AAD)
    failures.append(short_key.value)
    needles = [b"KEYCANARY", b"PLAINTEXT-CANARY", bytes(key), bytes(wrong_key), plaintext]
    for exc in failures:
        text = f"{exc}\n{exc!r}"
        for needle in needles:
            assert needle.decode() not in text
            assert needle.hex() not in text
        assert "KEYCANARY" not in text and "CANARY" not in text


# -- derive_subkey -----------------------------------------------------------------------


def test_derive_subkey_is_deterministic_and_label_separated() -> None:
    master = random_key()
    a = derive_subkey(master, "storage.sqlcipher")
    assert isinstance(a, bytearray) and len(a) == 32
    assert a == derive_subkey(bytes(master), "storage.sqlcipher")
    assert a != derive_subkey(master, "storage.rocksdb")
    assert a != derive_subkey(random_key(), "storage.sqlcipher")
    assert len(derive_subkey(master, "authn.token-signing", length=64)) == 64
    # A longer output extends the shorter one (HKDF-Expand); callers who need both must use two labels.
    assert derive_subkey(master, "storage.sqlcipher", length=64)[:32] == a


def test_derive_subkey_uses_the_documented_info() -> None:
    master = bytearray(range(32))
    expected = hazmat.hkdf_sha256(master, salt=None, info=b"curvemesh/v1/audit.chain", length=32)
    assert derive_subkey(master, "audit.chain") == expected


@pytest.mark.parametrize(
    "label",
    ["", "Storage", "storage key", "storage/key", "storage\n", "ü", "a" * 65, "storage:key", "\x00"],
)
def test_derive_subkey_refuses_bad_labels(label: str) -> None:
    with pytest.raises(ValueError, match="subkey label"):
        derive_subkey(random_key(), label)


def test_derive_subkey_accepts_the_whole_label_alphabet() -> None:
    derive_subkey(random_key(), "a" * 64)
    derive_subkey(random_key(), "0.9_a-z")


def test_derive_subkey_refuses_short_master_and_bad_lengths() -> None:
    with pytest.raises(ValueError, match="master key"):
        derive_subkey(bytes(16), "storage")
    for length in (0, 15, 255 * 32 + 1):
        with pytest.raises(ValueError, match="subkey length"):
            derive_subkey(random_key(), "storage", length=length)


# -- derive_from_password ------------------------------------------------------------------


def test_derive_from_password_is_deterministic_and_salt_dependent() -> None:
    key = derive_from_password(b"correct horse", SALT, TINY)
    assert isinstance(key, bytearray) and len(key) == 32
    assert key == derive_from_password(bytearray(b"correct horse"), SALT, TINY)
    assert key != derive_from_password(b"correct horse", bytes(reversed(SALT)), TINY)
    assert key != derive_from_password(b"correct horsf", SALT, TINY)
    assert key != derive_from_password(b"correct horse", SALT, Argon2Profile(16, 1, 2))
    assert key != derive_from_password(b"correct horse", SALT, Argon2Profile(8, 2, 1))


def test_derive_from_password_matches_raw_argon2id() -> None:
    profile = Argon2Profile(memory_kib=32, iterations=2, parallelism=2)
    expected = hazmat.argon2id(b"pw", salt=SALT, length=32, iterations=2, lanes=2, memory_kib=32)
    assert derive_from_password(b"pw", SALT, profile) == expected


def test_derive_from_password_refuses_short_salt_and_impossible_profile() -> None:
    with pytest.raises(ValueError, match="salt must be at least 16 bytes"):
        derive_from_password(b"pw", SALT[:15], TINY)
    with pytest.raises(ValueError, match="8 KiB of memory per lane"):
        derive_from_password(b"pw", SALT, Argon2Profile(memory_kib=8, iterations=1, parallelism=2))


# -- check_profile ----------------------------------------------------------------------------

MIB = 1024


@pytest.mark.parametrize(
    ("memory_kib", "iterations", "ok"),
    [
        (18 * MIB, 2, False),
        (19 * MIB - 1, 2, False),
        (19 * MIB, 2, True),
        (19 * MIB, 1, False),
        (45 * MIB, 1, False),
        (46 * MIB - 1, 1, False),
        (46 * MIB, 1, True),
        (1 << 20, 3, True),
    ],
)
def test_check_profile_owasp_floor(memory_kib: int, iterations: int, ok: bool) -> None:
    profile = Argon2Profile(memory_kib=memory_kib, iterations=iterations, parallelism=1)
    if ok:
        check_profile("master", profile, allow_test=False)
    else:
        with pytest.raises(ConfigError, match=r"^argon2\.master: .*below the OWASP minimum"):
            check_profile("master", profile, allow_test=False)
    check_profile("master", profile, allow_test=True)


def test_check_profile_tiny_only_with_allow_test() -> None:
    with pytest.raises(ConfigError, match=r"argon2\.authentication"):
        check_profile("authentication", TINY, allow_test=False)
    check_profile("authentication", TINY, allow_test=True)


def test_check_profile_refuses_impossible_profile_even_for_tests() -> None:
    with pytest.raises(ConfigError, match=r"argon2\.file\.memory_kib"):
        check_profile("file", Argon2Profile(memory_kib=16, iterations=1, parallelism=4), allow_test=True)


def test_default_profiles_meet_the_floor() -> None:
    defaults = Argon2Config()
    for context in ("master", "database", "file", "authentication"):
        check_profile(context, getattr(defaults, context), allow_test=False)


# -- wipe --------------------------------------------------------------------------------------


def test_wipe_zeroes_in_place() -> None:
    key = random_key()
    key[0] |= 1  # never all zeros already
    view = memoryview(key)
    wipe(key)
    assert key == bytearray(KEY_BYTES)
    assert bytes(view) == bytes(KEY_BYTES)  # the same storage, not a new object
    view.release()
    empty = bytearray()
    wipe(empty)
    assert empty == bytearray()


def test_wipe_refuses_what_it_cannot_wipe() -> None:
    with pytest.raises(TypeError, match="only a bytearray"):
        wipe(b"secret")  # type: ignore[arg-type]


def test_secrets_open_into_a_wipeable_buffer() -> None:
    from shared.crypto import open_sealed_secret
    key = random_key()
    blob = seal(key, b"data key bytes", b"aad")
    opened = open_sealed_secret(key, blob, b"aad")
    assert isinstance(opened, bytearray) and opened == b"data key bytes"
    wipe(opened)
    assert opened == bytearray(len(opened))
    with pytest.raises(IntegrityError):
        open_sealed_secret(key, blob, b"other aad")


def test_sealer_blobs_are_seal_blobs_both_ways() -> None:
    key = random_key()
    sealer = Sealer(key)
    for plaintext in (b"", b"x", bytes(range(256)) * 3):
        assert open_sealed(key, sealer.seal(plaintext, b"aad"), b"aad") == plaintext
        assert sealer.open(seal(key, plaintext, b"aad"), b"aad") == plaintext
    blob = sealer.seal(b"secret", b"aad")
    for bad in (blob[:-1], blob[:SEAL_OVERHEAD - 1], b"\x02" + blob[1:], blob[:-1] + bytes([blob[-1] ^ 1])):
        with pytest.raises(IntegrityError):
            sealer.open(bad, b"aad")
    with pytest.raises(IntegrityError):
        sealer.open(blob, b"other aad")
    with pytest.raises(IntegrityError):
        Sealer(random_key()).open(blob, b"aad")
    # Wiping the caller's key does not change the sealer (it holds its own copy) until it is closed.
    wipe(key)
    assert sealer.open(blob, b"aad") == b"secret"
    sealer.close()
    assert sealer.closed
    for use in (lambda: sealer.seal(b"x", b""), lambda: sealer.open(blob, b"aad")):
        with pytest.raises(ValueError, match="closed"):
            use()
    with pytest.raises(ValueError):
        Sealer(bytearray(16))


def test_sealer_seal_many_is_seal_of_each_under_distinct_nonces(monkeypatch: pytest.MonkeyPatch) -> None:
    import secrets

    key = random_key()
    sealer = Sealer(key)
    items = [(b"", b"a"), (b"x", b""), (bytes(range(256)), b"aad 3"), (b"x", b"")]
    blobs = sealer.seal_many(items)
    assert len(blobs) == len(items) and sealer.seal_many([]) == []
    for (plaintext, aad), blob in zip(items, blobs, strict=True):
        assert len(blob) == len(plaintext) + SEAL_OVERHEAD and blob[0] == 0x01
        assert open_sealed(key, blob, aad) == plaintext == sealer.open(blob, aad)
        with pytest.raises(IntegrityError):
            sealer.open(blob, aad + b"!")
    assert len({blob[1:13] for blob in blobs}) == len(blobs)  # a nonce each (same plaintext and aad twice)
    # The nonces are cut, in order, from one read of the CSPRNG of exactly the size they need.
    reads: list[int] = []
    monkeypatch.setattr(secrets, "token_bytes", lambda n: reads.append(n) or bytes(range(n)))
    blobs = sealer.seal_many(items)
    assert reads == [12 * len(items)]
    assert [b[1:13] for b in blobs] == [bytes(range(i, i + 12)) for i in range(0, 48, 12)]
    sealer.close()
    with pytest.raises(ValueError, match="closed"):
        sealer.seal_many(items)


def test_a_framed_sealer_binds_its_header_and_matches_the_header_plus_seal() -> None:
    key = random_key()
    sealer = Sealer(key, frame=b"HDR")
    blob = sealer.seal(b"secret", b"aad")
    # frame || seal(plaintext, aad = frame || aad): what a store wrote as header + seal() before.
    assert blob.startswith(b"HDR\x01") and len(blob) == 3 + SEAL_OVERHEAD + len(b"secret")
    assert open_sealed(key, blob[3:], b"HDR" + b"aad") == b"secret"
    assert sealer.open(b"HDR" + seal(key, b"other", b"HDRaad"), b"aad") == b"other"
    assert sealer.seal_many([(b"secret", b"aad")])[0][:4] == b"HDR\x01"
    assert sealer.open(sealer.seal_many([(b"x", b"aad")])[0], b"aad") == b"x"
    # Truncation, another frame, another seal version, any flipped bit, other associated data.
    for bad in (blob[:-1], blob[:3 + SEAL_OVERHEAD - 1], b"HDX" + blob[3:], b"HDR\x02" + blob[4:], blob[3:],
                blob[:-1] + bytes([blob[-1] ^ 1]), blob[:10] + bytes([blob[10] ^ 1]) + blob[11:]):
        with pytest.raises(IntegrityError):
            sealer.open(bad, b"aad")
    with pytest.raises(IntegrityError):
        sealer.open(blob, b"other aad")
    # The frame is authenticated: the same key under another frame does not open it, moved or not.
    with pytest.raises(IntegrityError):
        Sealer(key, frame=b"HDX").open(b"HDX" + blob[3:], b"aad")
    with pytest.raises(IntegrityError):
        Sealer(key).open(blob[3:], b"aad")
    for frame in (bytes(65), "HDR"):
        with pytest.raises(ValueError):
            Sealer(key, frame=frame)  # type: ignore[arg-type]


def test_keyed_hash_is_hmac_sha256_of_prefix_and_data() -> None:
    import hmac

    key = random_key()
    base = KeyedHash(key)
    labelled = base.extend(b"label")
    for data in (b"", b"name", bytes(200)):
        assert base.digest(data) == hmac.digest(bytes(key), data, "sha256")
        assert labelled.digest(data) == hmac.digest(bytes(key), b"label" + data, "sha256")
        assert KeyedHash(key, b"label").digest(data) == labelled.digest(data)
    assert labelled.extend(b"more").digest(b"x") == hmac.digest(bytes(key), b"labelmorex", "sha256")
    base.close()
    assert base.closed and not labelled.closed  # each holds its own keyed state
    with pytest.raises(ValueError, match="closed"):
        base.digest(b"x")
    with pytest.raises(ValueError):
        KeyedHash(bytearray(16))


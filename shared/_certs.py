"""CURVE certificates: generation, safe writing, strict loading, fingerprints.

Files use the ZeroMQ certificate format (ZPL), as written by ``zmq.auth``,
with a ``metadata`` section carrying ``name`` and ``role``. Unlike
``zmq.auth.create_certificates``, secret files are created with mode 0600
and ``O_EXCL`` (never through the default umask), and a secret file that
group or others can read is refused at load.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ._errors import CertificateError

# pyzmq is imported inside the functions that need it (making keys, deriving one), not here: the
# configuration imports this module for names and roles, and a program that reads only those
# (meshctl --help, shell completion) or reads certificates (status) must not pay for loading
# libzmq. Z85 keys are decoded here for the same reason (:func:`z85_decode`).
ROLES: Final = frozenset({"service", "operator", "device", "plugin"})
NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_Z85_RE: Final = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_LINE_RE: Final = re.compile(r'^(\s*)([a-z][a-z0-9_-]*)(?:\s*=\s*"([^"]*)")?\s*$')


#: Z85's 85 symbols, in the order of their values (ZeroMQ RFC 32).
_Z85_CHARS: Final = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUE: Final = {symbol: value for value, symbol in enumerate(_Z85_CHARS)}


def z85_decode(text: str | bytes | bytearray | memoryview) -> bytes:
    """The bytes Z85 ``text`` encodes (each 5 symbols, one big-endian 32-bit word).

    pyzmq's ``zmq.utils.z85`` cannot be imported without the ``zmq`` package, which loads libzmq and
    costs more than the interpreter's own start: ``meshctl status`` of a mesh that is down reads the
    broker's certificate and talks to no one (issue 13). Encoding stays pyzmq's, in the code that
    makes keys or speaks CURVE and has libzmq loaded anyway. Results and errors are those of
    ``zmq.utils.z85.decode`` (tests/test_certs.py compares them): ValueError for text that is not
    ASCII or whose length is not a multiple of 5, KeyError for a symbol outside Z85, struct.error
    for a group above 2**32 - 1."""
    if isinstance(text, str):
        try:
            data = text.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("string argument should contain only ASCII characters") from None
    else:
        data = bytes(text)
    if len(data) % 5:
        raise ValueError(f"Z85 length must be multiple of 5, not {len(data)}")
    words = []
    for start in range(0, len(data), 5):
        word = 0
        for symbol in data[start:start + 5]:
            word = word * 85 + _Z85_VALUE[symbol]
        words.append(word)
    return struct.pack(f">{len(words)}I", *words)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid identity name, else raise :class:`CertificateError`."""
    # fullmatch: a "$" in a pattern given to match() also matches before a final newline, and a
    # name is written into certificate files, where a newline would start a line of its own.
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise CertificateError(
            "identity names are 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter"
        )
    return name


def check_public_key(z85: str | bytes) -> bytes:
    """Validate a Z85 CURVE public key and return it as Z85 bytes.

    Refuses a wrong length, characters outside Z85, and the all-zero key.
    """
    text = z85.decode("ascii", "replace") if isinstance(z85, bytes) else z85
    if not _Z85_RE.fullmatch(text):
        raise CertificateError("a CURVE key must be 40 characters of Z85")
    raw = z85_decode(text.encode("ascii"))
    if len(raw) != 32 or raw == bytes(32):
        raise CertificateError("a CURVE key must decode to 32 bytes and not be all zero")
    return text.encode("ascii")


def fingerprint(public_key: bytes) -> str:
    """SHA-256 of the raw 32-byte public key, as lowercase hex."""
    return hashlib.sha256(z85_decode(public_key)).hexdigest()


@dataclass(frozen=True, slots=True)
class Certificate:
    """A public certificate: Z85 public key plus the identity it names."""

    public_key: bytes
    name: str
    role: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public_key)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate together with its Z85 secret key. Never log or repr the secret."""

    certificate: Certificate
    secret_key: bytes

    def __repr__(self) -> str:
        return f"KeyPair({self.certificate!r}, secret_key=<redacted>)"


def _render(cert: Certificate, secret: bytes | None) -> str:
    kind = "Secret" if secret is not None else "Public"
    lines = [
        f"#   ****  curvemesh CURVE {kind} Certificate  ****",
        f"#   ZeroMQ CURVE {kind} Certificate",
        "#   Exchange securely, or use a secure mechanism to verify the contents"
        if secret is None else "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.",
        "",
        "metadata",
        f'    name = "{cert.name}"',
        f'    role = "{cert.role}"',
        "curve",
        f'    public-key = "{cert.public_key.decode("ascii")}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def generate(name: str, role: str) -> KeyPair:
    """Make a fresh CURVE keypair for identity ``name`` with ``role``."""
    check_name(name)
    if role not in ROLES:
        raise CertificateError(f"role must be one of {', '.join(sorted(ROLES))}")
    import zmq  # imported late: see the note above ROLES
    public, secret = zmq.curve_keypair()
    return KeyPair(Certificate(public, name, role), secret)


def write_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` and ``O_EXCL``, write ``data`` and fsync it.

    The mode is set at creation, so the file is never readable by others even
    for an instant; an existing file is never overwritten.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; widen to exactly mode.
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def save_public(cert: Certificate, path: Path) -> None:
    """Write a public certificate (mode 0600, like every file of the mesh: a public key is no secret,
    but nothing in the home is anyone else's to read) at ``path``; refuses to overwrite."""
    write_exclusive(path, _render(cert, None).encode("ascii"), 0o600)


def save_keypair(pair: KeyPair, directory: Path) -> tuple[Path, Path]:
    """Write ``<name>.key`` and ``<name>.key_secret`` (both 0600, O_EXCL) into ``directory``."""
    name = pair.certificate.name
    public_path = directory / f"{name}.key"
    secret_path = directory / f"{name}.key_secret"
    write_exclusive(secret_path, _render(pair.certificate, pair.secret_key).encode("ascii"), 0o600)
    save_public(pair.certificate, public_path)
    return public_path, secret_path


def _parse(text: str, where: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        # Only whole lines are comments: Z85 keys may contain '#'.
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE_RE.match(line)
        if not match:
            raise CertificateError(f"{where}: line {number} is not valid certificate syntax")
        indent, key, value = match.groups()
        if not indent and value is None:
            if key in sections:
                raise CertificateError(f"{where}: section {key!r} appears twice")
            current = sections[key] = {}
        elif indent and value is not None and current is not None:
            if key in current:
                raise CertificateError(f"{where}: {key!r} appears twice")
            current[key] = value
        else:
            raise CertificateError(f"{where}: line {number} is not valid certificate syntax")
    return sections


def load_certificate(path: Path) -> Certificate:
    """Load and validate a public certificate file (a secret file's public part works too)."""
    where = path.name
    try:
        text = path.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise CertificateError(f"{where}: cannot be read ({type(exc).__name__})") from None
    sections = _parse(text, where)
    meta = sections.get("metadata", {})
    curve = sections.get("curve", {})
    if "public-key" not in curve:
        raise CertificateError(f"{where}: no curve public-key")
    public = check_public_key(curve["public-key"])
    name = check_name(meta.get("name", ""))
    role = meta.get("role", "")
    if role not in ROLES:
        raise CertificateError(f"{where}: role must be one of {', '.join(sorted(ROLES))}")
    return Certificate(public, name, role)


def load_keypair(path: Path) -> KeyPair:
    """Load a secret certificate; refuse it if group or others may read or write it."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError as exc:
        raise CertificateError(f"{path.name}: cannot be read ({type(exc).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        raise CertificateError(f"{path.name}: is not a regular file")
    if info.st_mode & 0o077:
        raise CertificateError(
            f"{path.name}: secret key file is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); it must be 0600"
        )
    cert = load_certificate(path)
    sections = _parse(path.read_text("ascii"), path.name)
    secret_text = sections["curve"].get("secret-key")
    if secret_text is None:
        raise CertificateError(f"{path.name}: no curve secret-key")
    secret = check_public_key(secret_text)  # same Z85 shape rules apply to secret keys
    import zmq  # imported late: see the note above ROLES
    derived = zmq.curve_public(secret)
    if derived != cert.public_key:
        raise CertificateError(f"{path.name}: secret key does not match its public key")
    return KeyPair(cert, secret)

"""Access tokens: EdDSA-signed JWTs bound to the presenting peer's CURVE key.

The issuer (authn) signs with :class:`SigningKeys` and :func:`issue_access`; anyone verifies with
:func:`verify_access`, which returns :class:`AccessClaims` or raises :class:`InvalidToken` (its
``reason`` is a short code for the audit log, never the token). A service verifying in its own
process builds :class:`PublicKeys` from the issuer's published JWKs, or uses
:class:`LocalVerifier`, which also follows the issuer's revocations. The code and the full contract
(header, claims, clock, attacks refused) are in :mod:`shared._tokens` and :mod:`shared._token_keys`.
"""

from __future__ import annotations

from ._local_verifier import KEYS_REFRESH_S, LocalVerifier
from ._token_keys import (
    MAX_ACCESS_LIFETIME_S,
    SEED_BYTES,
    PublicKeys,
    SigningKeys,
    b64url,
    b64url_decode,
    check_version,
    kid_for,
)
from ._tokens import (
    MAX_TOKEN_BYTES,
    MESH_AUDIENCE,
    REASONS,
    AccessClaims,
    InvalidToken,
    VerifiedTokens,
    claimed_subject,
    issue_access,
    verify_access,
)

__all__ = ["KEYS_REFRESH_S", "MAX_ACCESS_LIFETIME_S", "MAX_TOKEN_BYTES", "MESH_AUDIENCE", "REASONS", "SEED_BYTES",
           "AccessClaims", "InvalidToken", "LocalVerifier", "PublicKeys", "SigningKeys", "VerifiedTokens", "b64url",
           "b64url_decode", "check_version", "claimed_subject", "issue_access", "kid_for", "verify_access"]

"""Short-lived JWT access tokens issued for API keys, and how the hook verifies them.

A client trades its key at ``POST APIKEYS_JWT_TOKEN_PATH`` for a token that names the key
(``sub``), its organization (``org``) and some or all of its scopes (``scope``), so that the
long-lived secret crosses the network once per token instead of on every request. A token
received later resolves to the *same* snapshot the key itself would give, through the same
cache, with only its scopes narrowed: scopes, the organization's state, the network allowlist,
rate limits and usage rows all apply to the issuing key exactly as if it had been sent.

Every token names its signing key in ``kid``; a verifier pins the algorithm of that key (never
the one the token claims), so ``alg: none`` and HMAC-with-the-public-key forgeries cannot pass.
PyJWT is optional (the ``jwt`` extra); without it the feature stays off. The token and JWKS
endpoints are in :mod:`flask_apikeys.oauth`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .boundedcache import BoundedCache
from .cache import MAX_CACHE_BYTES, approximate_size
from .config import ConfigError
from .environ import CLAIMS_ENVIRON_KEY
from .errors import (
    APIKeyError,
    ExpiredToken,
    InsufficientScope,
    InvalidInput,
    InvalidToken,
    OrganizationInactive,
)
from .scopes import scope_covers, validate_scope

try:
    import jwt
except ImportError:  # pragma: no cover - the jwt extra is not installed
    PYJWT_INSTALLED = False
else:
    PYJWT_INSTALLED = True

if TYPE_CHECKING:
    from .config import Settings
    from .identity import VerifiedKey
    from .revocation import TokenDenyList
    from .service import KeyService

#: RFC 9068's media type for JWT access tokens: a token with another ``typ`` (say, an ID token
#: signed with the same key elsewhere) is not an access token for this API.
ACCESS_JWT_TYP = "at+jwt"
JWKS_PATH = "/.well-known/jwks.json"
#: The longest token decoded at all.
MAX_TOKEN_LENGTH = 8192
#: The longest token issued: below :data:`MAX_TOKEN_LENGTH` and below the 8,190 bytes a
#: header line may have in gunicorn (and 8 kB in common proxies) with ``Authorization: Bearer``
#: in front, so every token issued is one that is then accepted. A key with too many scopes
#: for one token is told to ask for fewer (``scope``).
MAX_ISSUED_TOKEN_LENGTH = 8000
#: The most memory (by :func:`~flask_apikeys.cache.approximate_size`) that narrowed token
#: snapshots hold before they are forgotten: each may carry hundreds of scopes.
MAX_NARROWED_BYTES = MAX_CACHE_BYTES
REQUIRED_CLAIMS = ["iss", "aud", "sub", "org", "scope", "iat", "exp", "jti"]
#: How long verifiers may cache the JWKS document; add a new key this long before it signs.
JWKS_MAX_AGE = 300
MAX_REMEMBERED = 10_000


def looks_like_token(credential: str) -> bool:
    """Whether a credential is a JWT (``eyJ…`` and two dots); keys never contain a dot."""
    return credential.startswith("eyJ") and credential.count(".") == 2


@dataclass(frozen=True, slots=True)
class TokenKey:
    """One key that verifies tokens (the first also signs), named by ``kid`` in token headers."""

    kid: str
    algorithm: str
    signing_key: Any = field(repr=False)
    verifying_key: Any = field(repr=False)
    #: The public JWK published at ``/.well-known/jwks.json``; ``None`` for HMAC secrets.
    public_jwk: dict[str, Any] | None = None


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint: the same ``kid`` in every process without configuring one."""
    required = ("e", "kty", "n") if jwk["kty"] == "RSA" else ("crv", "kty", "x", "y")
    canonical = json.dumps({name: jwk[name] for name in required}, separators=(",", ":"))
    return _base64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _secret_key(secret: str) -> TokenKey:
    # A digest names the secret without revealing it; a token's HMAC already proves as much.
    digest = hashlib.sha256(b"flask-apikeys jwt kid\0" + secret.encode("utf-8")).digest()
    raw = secret.encode("utf-8")
    return TokenKey("hs256-" + _base64url(digest[:12]), "HS256", raw, raw)


def _private_key(kid: str | None, pem: str, position: int) -> TokenKey:
    """Load one PEM private key; RSA signs RS256, a P-256 EC key ES256."""
    from jwt.algorithms import has_crypto

    if not has_crypto:
        raise RuntimeError(
            "APIKEYS_JWT_PRIVATE_KEYS needs the cryptography package: "
            "pip install 'flask-apikeys[jwt]'."
        )
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    name = f"APIKEYS_JWT_PRIVATE_KEYS is invalid: key {kid or position}"
    try:
        private_key = load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{name} is not a readable, unencrypted PEM private key") from None
    if isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < 2048:
            raise ConfigError(f"{name} has {private_key.key_size} bits; RS256 needs 2048 or more")
        algorithm = "RS256"
        jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    elif isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
        private_key.curve, ec.SECP256R1
    ):
        algorithm = "ES256"
        jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    else:
        raise ConfigError(f"{name} must be an RSA key (RS256) or a P-256 EC key (ES256)")
    kid = kid or _thumbprint(jwk)
    public_jwk = {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}
    return TokenKey(kid, algorithm, private_key, private_key.public_key(), public_jwk)


def load_token_keys(settings: Settings) -> list[TokenKey]:
    """Every configured key, the signing one first: a private key if any, else a secret."""
    keys = [
        _private_key(kid, pem, position)
        for position, (kid, pem) in enumerate(settings.jwt_private_keys, 1)
    ]
    keys += [_secret_key(secret) for secret in settings.jwt_secret]
    kids = [key.kid for key in keys]
    duplicates = sorted({kid for kid in kids if kids.count(kid) > 1})
    if duplicates:
        raise ConfigError(f"APIKEYS_JWT_* names a key twice: {', '.join(duplicates)}")
    return keys


#: PyJWT's refusals, said in words that help a client without helping a forger much.
_REASONS = {
    "InvalidSignatureError": "its signature does not match",
    "InvalidAlgorithmError": "its algorithm is not the one of its signing key",
    "InvalidAudienceError": "it is meant for another audience",
    "InvalidIssuerError": "it comes from another issuer",
    "MissingRequiredClaimError": "a required claim is missing",
    "ImmatureSignatureError": "it is not valid yet",
}


class TokenAuthority:
    """Issues and verifies the access tokens of one app (kept as ``ExtensionState.tokens``)."""

    is_token = staticmethod(looks_like_token)

    def __init__(self, settings: Settings, service: KeyService) -> None:
        if not PYJWT_INSTALLED:
            raise RuntimeError(
                "APIKEYS_JWT_ENABLED needs PyJWT: pip install 'flask-apikeys[jwt]', or set "
                "APIKEYS_JWT_ENABLED = False."
            )
        self.service = service
        keys = load_token_keys(settings)
        self.signing_key = keys[0]
        self.keys = {key.kid: key for key in keys}
        self.public_jwks = [key.public_jwk for key in keys if key.public_jwk is not None]
        self.lifetime = settings.jwt_lifetime
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.check_revocation = settings.jwt_check_revocation
        self.token_path = settings.jwt_token_path
        #: Revoked token ids (RFC 7009), set by ``init_app``; ``None``: none are refused by id.
        self.deny_list: TokenDenyList | None = None
        #: (id of a key snapshot, scope claim) → (that snapshot, its narrowed copy), so a busy
        #: token yields the same object each time (the rate limiter caches per snapshot).
        #: Bounded by memory too, since a client can mint a token per subset of its scopes.
        self._narrowed: BoundedCache[tuple[int, str], tuple[VerifiedKey, VerifiedKey]] = (
            BoundedCache(MAX_REMEMBERED, MAX_NARROWED_BYTES)
        )

    # -- issuing ------------------------------------------------------------------------------

    def issue(self, key: VerifiedKey, scope: str | None = None) -> dict[str, Any]:
        """A signed token for ``key``, with all its scopes or the ``scope`` subset asked for.

        Never outlives the key: ``exp`` is at most the key's own expiry.
        """
        scopes = self.grantable_scopes(key, scope)
        issued = time.time()
        now = int(issued)
        # Rounded up: a client counts ``expires_in`` from when the answer arrives, so the token
        # must live at least that long (rounded down, it died up to a second early).
        expires = math.ceil(issued + self.lifetime)
        if key.expires_at_timestamp is not None:
            expires = min(expires, int(key.expires_at_timestamp))
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(key.id),
            "org": str(key.organization.id),
            "scope": " ".join(scopes),
            "iat": now,
            "exp": expires,
            "jti": secrets.token_urlsafe(16),
        }
        signer = self.signing_key
        token = jwt.encode(
            claims,
            signer.signing_key,
            algorithm=signer.algorithm,
            headers={"kid": signer.kid, "typ": ACCESS_JWT_TYP},
        )
        if len(token) > MAX_ISSUED_TOKEN_LENGTH:
            raise InvalidInput(
                f"A token with these {len(scopes)} scopes would be {len(token)} characters, "
                f"over the {MAX_ISSUED_TOKEN_LENGTH} a request header can carry; ask for the "
                'scopes this client needs, e.g. {"scope": "a:read b:read"}.',
                errors={"scope": [f"too many scopes for one token ({len(scopes)})"]},
            )
        return {
            "token_type": "Bearer",
            "access_token": token,
            "expires_in": max(0, int(expires - issued)),  # whole seconds, never more than left
            "scope": claims["scope"],
        }

    @staticmethod
    def grantable_scopes(key: VerifiedKey, scope: str | None) -> list[str]:
        """The scopes a token may carry: the key's, or a subset of them, never more."""
        if scope is None:
            return sorted(key.scopes)
        requested = sorted(set(scope.split()))
        try:
            for name in requested:
                validate_scope(name)
        except ValueError as error:
            raise InvalidInput(errors={"scope": [str(error)]}) from None
        # Covered, not merely granted: a ``*:*`` key must not hand out ``presentations:*``.
        beyond = [name for name in requested if not scope_covers(key.scopes, name)]
        if beyond:
            raise InsufficientScope(
                f"This key cannot grant: {', '.join(beyond)}.", scopes_not_granted=beyond
            )
        return requested

    # -- verifying ----------------------------------------------------------------------------

    def verify(self, token: str, environ: dict[str, Any]) -> VerifiedKey:
        """The issuing key's snapshot, scopes narrowed to the token's; or raise why not."""
        claims = self.decode(token)
        try:
            key_id, organization_id = uuid.UUID(claims["sub"]), uuid.UUID(claims["org"])
        except (ValueError, TypeError, AttributeError):
            raise InvalidToken("The access token is malformed.") from None
        scope = claims["scope"]
        if not isinstance(scope, str) or not isinstance(claims["jti"], str):
            raise InvalidToken("The access token is malformed.")
        if self.deny_list is not None and self.deny_list.is_revoked(claims["jti"]):
            raise InvalidToken("The access token has been revoked.")
        verified = self.service.verification.verified_key_by_id(key_id)
        if verified is None or verified.organization.id != organization_id:
            raise InvalidToken("The key this token was issued for no longer exists.")
        refusal: APIKeyError | None = None
        if self.check_revocation and (verified.revoked_at is not None or not verified.is_active):
            refusal = InvalidToken("The key this token was issued for has been revoked.")
        elif self.check_revocation and verified.is_expired():
            refusal = ExpiredToken("The key this token was issued for has expired.")
        elif not verified.organization.is_active:
            refusal = OrganizationInactive("The organization that owns this API key is inactive.")
        if refusal is not None:
            raise refusal.about_key(verified.id, organization_id)
        environ[CLAIMS_ENVIRON_KEY] = claims
        return self._narrow(verified, scope)

    def decode(self, token: str) -> dict[str, Any]:
        """Check signature, algorithm, type, issuer, audience and expiry; return the claims."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("The access token is malformed.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("The access token is malformed.") from None
        kid = header.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("The access token was not signed by a key this service knows.")
        if header.get("typ") != ACCESS_JWT_TYP:
            raise InvalidToken("The token is not an access token of this service.")
        try:
            return jwt.decode(
                token,
                key.verifying_key,
                algorithms=[key.algorithm],  # the key's own, whatever the header claims
                audience=self.audience,
                issuer=self.issuer,
                # iat is informational: a host whose clock runs slightly ahead must not make
                # fresh tokens fail elsewhere; exp is what bounds a token.
                options={"require": REQUIRED_CLAIMS, "strict_aud": True, "verify_iat": False},
            )
        except jwt.ExpiredSignatureError:
            raise ExpiredToken("The access token has expired; request a new one.") from None
        except jwt.PyJWTError as error:
            reason = _REASONS.get(type(error).__name__, "it is malformed")
            raise InvalidToken(f"The access token is not valid: {reason}.") from None

    def _narrow(self, verified: VerifiedKey, scope: str) -> VerifiedKey:
        entry = self._narrowed.get((id(verified), scope))
        if entry is not None and entry[0] is verified:
            return entry[1]
        # Only what the key still has: narrowing a key's scopes narrows its live tokens too.
        scopes = frozenset(name for name in scope.split() if scope_covers(verified.scopes, name))
        narrowed = replace(verified, scopes=scopes)
        # The entry keeps the claim and the narrowed copy (the snapshot is the key cache's).
        size = approximate_size(narrowed) + sys.getsizeof(scope)
        # A snapshot is not hashable (its metadata is a dict), so it is found by identity: it
        # is kept in the entry, so its id() cannot be reused while the entry is there.
        self._narrowed.put((id(verified), scope), (verified, narrowed), size)
        return narrowed

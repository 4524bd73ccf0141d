"""How keys are stored: a deterministic, fast digest behind a passlib ``CryptContext``.

Keys are long random strings, not passwords: a slow, salted password hash buys nothing against
brute force (the search space is 2**238) and costs milliseconds on every request. We use a
keyed HMAC-SHA256 with a server-side secret (``APIKEYS_HASH_SECRET``), or plain SHA-256 when no
secret is configured. The digest is deterministic so that a key is found through an index.

The ``CryptContext`` lets a deployment name its schemes and retire old ones: the first scheme of
``APIKEYS_HASH_SCHEMES`` (and the first secret of ``APIKEYS_HASH_SECRET``) hashes new keys; a key
stored under any other one still verifies and is rehashed on that use.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence

from passlib.context import CryptContext
from passlib.handlers.digests import hex_sha256, hex_sha512
from passlib.utils import handlers as passlib_handlers

HMAC_SHA256 = "hmac_sha256"
UNKEYED_SCHEMES = {"hex_sha256": hex_sha256, "hex_sha512": hex_sha512}
SUPPORTED_SCHEMES = (HMAC_SHA256, *UNKEYED_SCHEMES)


def secret_fingerprint(secret: str) -> str:
    """A short, non-reversible name for a hash secret, stored with each hash it made."""
    return hashlib.sha256(b"flask-apikeys:hash-secret:" + secret.encode()).hexdigest()[:8]


def _hmac_handler(secret: str) -> type[passlib_handlers.StaticHandler]:
    """A passlib handler for HMAC-SHA256 under one secret: ``$hmac-sha256$<fingerprint>$<hex>``."""
    secret_bytes = secret.encode()
    fingerprint = secret_fingerprint(secret)

    class HMACSHA256(passlib_handlers.StaticHandler):  # type: ignore[misc]
        name = f"{HMAC_SHA256}_{fingerprint}"
        checksum_chars = passlib_handlers.LOWER_HEX_CHARS
        checksum_size = 64
        _hash_prefix = f"$hmac-sha256${fingerprint}$"

        def _calc_checksum(self, secret_text: str | bytes) -> str:
            if isinstance(secret_text, str):
                secret_text = secret_text.encode()
            return hmac.new(secret_bytes, secret_text, hashlib.sha256).hexdigest()

    return HMACSHA256


def _hmac_digester(secret: str) -> Callable[[bytes], str]:
    """What :func:`_hmac_handler`'s ``hash`` returns, without a passlib object per call.

    The standard library's HMAC keyed once: each call copies the keyed object instead of
    padding and hashing the secret again (``hmac.digest`` does that every time).
    """
    keyed = hmac.new(secret.encode(), digestmod=hashlib.sha256)
    prefix = f"$hmac-sha256${secret_fingerprint(secret)}$"

    def digest(key: bytes) -> str:
        mac = keyed.copy()
        mac.update(key)
        return prefix + mac.hexdigest()

    return digest


#: What the unkeyed handlers' ``hash`` returns, without passlib's per-call handler object.
UNKEYED_DIGESTERS: dict[str, Callable[[bytes], str]] = {
    "hex_sha256": lambda key: hashlib.sha256(key).hexdigest(),
    "hex_sha512": lambda key: hashlib.sha512(key).hexdigest(),
}


class KeyHasher:
    """Hashes keys for storage, lists the digests to look a key up by, and verifies them.

    :param schemes: scheme names, the first one used for new hashes.
    :param hash_secrets: server-side secrets, the first one used for new hashes.
    """

    def __init__(self, schemes: Sequence[str], hash_secrets: Sequence[str]) -> None:
        handlers: list[type[passlib_handlers.StaticHandler]] = []
        digesters: list[Callable[[bytes], str]] = []
        for scheme in schemes:
            if scheme == HMAC_SHA256:
                if not hash_secrets:
                    raise RuntimeError(
                        "APIKEYS_HASH_SCHEMES names hmac_sha256 but APIKEYS_HASH_SECRET is not "
                        "set: set a secret, or remove hmac_sha256 from the schemes."
                    )
                handlers.extend(_hmac_handler(secret) for secret in hash_secrets)
                digesters.extend(_hmac_digester(secret) for secret in hash_secrets)
            else:
                handlers.append(UNKEYED_SCHEMES[scheme])
                digesters.append(UNKEYED_DIGESTERS[scheme])
        self._handlers = tuple(handlers)
        # Every cache miss computes all of them: passlib's hash() builds a handler object
        # per call and costs several times the digest itself.
        self._digesters = tuple(digesters)
        self._current_digester = digesters[0]
        self._retired_digesters = tuple(digesters[1:])
        self._context = CryptContext(schemes=list(handlers), deprecated=["auto"])

    @property
    def default_scheme(self) -> str:
        """The passlib name of the scheme new keys are hashed with."""
        return str(self._handlers[0].name)

    def hash(self, key: str) -> str:
        """The stored form of ``key`` under the current scheme and secret."""
        return str(self._context.hash(key))

    def lookup_candidates(self, key: str) -> list[str]:
        """Every stored form ``key`` may have, the current one first."""
        encoded = key.encode()
        return [digest(encoded) for digest in self._digesters]

    def current_digest(self, key: str) -> str:
        """The stored form of ``key`` under the current scheme and secret (what :meth:`hash`
        returns), without passlib: what a cache miss looks a key up by first."""
        return self._current_digester(key.encode())

    def retired_candidates(self, key: str) -> list[str]:
        """The stored forms ``key`` may have under the retired schemes and secrets (empty when
        there are none): looked for only when no key is stored under the current one."""
        encoded = key.encode()
        return [digest(encoded) for digest in self._retired_digesters]

    def matches(self, candidate: str, stored_hash: str) -> bool:
        """Whether ``stored_hash`` is ``candidate``, compared in constant time."""
        return hmac.compare_digest(candidate.encode(), stored_hash.encode())

    def verify(self, key: str, stored_hash: str) -> bool:
        """Check ``key`` against a stored hash in constant time."""
        return bool(self._context.verify(key, stored_hash))

    def match_index(self, candidates: Sequence[str], stored_hash: str) -> int | None:
        """Which of ``candidates`` (from :meth:`lookup_candidates`) ``stored_hash`` is, or ``None``.

        Every candidate is compared in constant time, without an early exit. Index 0 is the
        current scheme and secret; any other index means the stored hash wants rehashing.
        Cheaper than :meth:`verify` because the digests are already computed.
        """
        stored = stored_hash.encode()
        matched = None
        for index, candidate in enumerate(candidates):
            if hmac.compare_digest(candidate.encode(), stored) and matched is None:
                matched = index
        return matched

    def needs_rehash(self, stored_hash: str) -> bool:
        """Whether ``stored_hash`` was made by a retired scheme or secret."""
        return bool(self._context.needs_update(stored_hash))


def cache_digest(key: str) -> bytes:
    """A fast digest to index the in-process cache of verified keys (never stored).

    BLAKE2s (256 bits): as strong as SHA-256 here and about half its cost per call, since
    OpenSSL's SHA-256 object is costly to set up for one short input.
    """
    return hashlib.blake2s(key.encode()).digest()


def admin_key_digest(admin_key: str) -> bytes:
    """What is kept of ``APIKEYS_ADMIN_KEY``: its SHA-256, compared in constant time."""
    return hashlib.sha256(admin_key.encode("utf-8", "surrogateescape")).digest()

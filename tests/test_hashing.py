from __future__ import annotations

import hashlib

import pytest

from flask_apikeys.hashing import KeyHasher

SECRET_A = "a-server-side-secret-one"
SECRET_B = "a-server-side-secret-two"
KEY = "pk_live_example"


def test_without_a_secret_keys_are_plain_sha256() -> None:
    hasher = KeyHasher(["hex_sha256"], [])
    assert hasher.hash(KEY) == hashlib.sha256(KEY.encode()).hexdigest()


def test_hmac_hash_depends_on_the_secret_and_verifies() -> None:
    first = KeyHasher(["hmac_sha256"], [SECRET_A]).hash(KEY)
    second = KeyHasher(["hmac_sha256"], [SECRET_B]).hash(KEY)
    assert first != second
    assert first.startswith("$hmac-sha256$")
    assert KeyHasher(["hmac_sha256"], [SECRET_A]).verify(KEY, first)
    assert not KeyHasher(["hmac_sha256"], [SECRET_A]).verify(KEY + "x", first)


def test_hash_is_deterministic_so_it_can_be_indexed() -> None:
    hasher = KeyHasher(["hmac_sha256", "hex_sha256"], [SECRET_A])
    assert hasher.hash(KEY) == hasher.hash(KEY) == hasher.lookup_candidates(KEY)[0]


def test_a_retired_secret_still_verifies_and_asks_for_a_rehash() -> None:
    old_hash = KeyHasher(["hmac_sha256"], [SECRET_A]).hash(KEY)
    rotated = KeyHasher(["hmac_sha256"], [SECRET_B, SECRET_A])
    assert old_hash in rotated.lookup_candidates(KEY)
    assert rotated.verify(KEY, old_hash)
    assert rotated.needs_rehash(old_hash)
    assert not rotated.needs_rehash(rotated.hash(KEY))


def test_a_retired_scheme_still_verifies_and_asks_for_a_rehash() -> None:
    legacy = hashlib.sha256(KEY.encode()).hexdigest()
    hasher = KeyHasher(["hmac_sha256", "hex_sha256"], [SECRET_A])
    assert hasher.verify(KEY, legacy)
    assert hasher.needs_rehash(legacy)


def test_hmac_without_a_secret_is_a_configuration_error() -> None:
    with pytest.raises(RuntimeError, match="APIKEYS_HASH_SECRET"):
        KeyHasher(["hmac_sha256"], [])


def test_match_index_names_the_candidate_a_stored_hash_is() -> None:
    rotated = KeyHasher(["hmac_sha256"], [SECRET_B, SECRET_A])
    candidates = rotated.lookup_candidates(KEY)
    old_hash = KeyHasher(["hmac_sha256"], [SECRET_A]).hash(KEY)
    assert rotated.match_index(candidates, rotated.hash(KEY)) == 0
    assert rotated.match_index(candidates, old_hash) == 1  # wants rehashing
    other = KeyHasher(["hmac_sha256"], [SECRET_A]).hash(KEY + "x")
    assert rotated.match_index(candidates, other) is None


@pytest.mark.parametrize(
    ("schemes", "secrets"),
    [
        (["hmac_sha256", "hex_sha256"], [SECRET_A, SECRET_B]),
        (["hex_sha512", "hmac_sha256"], [SECRET_B]),
        (["hex_sha256"], []),
        (["hmac_sha256"], ["a secret longer than SHA-256's block of sixty-four bytes " * 2]),
    ],
)
def test_lookup_candidates_are_what_passlib_stores(schemes: list[str], secrets: list[str]) -> None:
    """The lookup computes the digests itself (no passlib handler per call): the same strings,
    in the order of the schemes and secrets, as each scheme's passlib handler stores."""
    hasher = KeyHasher(schemes, secrets)
    for key in (KEY, "pk_live_" + "Zz09" * 12, "pk_live_é"):
        stored = []
        for scheme in schemes:
            for secret in secrets if scheme == "hmac_sha256" else [None]:
                only = KeyHasher([scheme], [] if secret is None else [secret])
                stored.append(only.hash(key))
        assert hasher.lookup_candidates(key) == stored
        assert all(hasher.verify(key, digest) for digest in stored)


@pytest.mark.parametrize(
    ("schemes", "secrets"),
    [
        (["hex_sha256"], []),
        (["hmac_sha256", "hex_sha256"], [SECRET_A]),
        (["hmac_sha256", "hex_sha512", "hex_sha256"], [SECRET_B, SECRET_A]),
    ],
)
def test_the_current_digest_and_the_retired_ones_are_the_lookup_candidates_split(
    schemes: list[str], secrets: list[str]
) -> None:
    """A cache miss looks a key up by the current digest first and computes the retired ones
    only when that finds nothing: together they must be every candidate, in order."""
    hasher = KeyHasher(schemes, secrets)
    key = "pk_live_" + "Q" * 46
    assert hasher.current_digest(key) == hasher.hash(key)
    assert [hasher.current_digest(key), *hasher.retired_candidates(key)] == (
        hasher.lookup_candidates(key)
    )
    assert hasher.matches(hasher.current_digest(key), hasher.hash(key))
    assert not hasher.matches(hasher.current_digest(key), hasher.hash(key + "x"))

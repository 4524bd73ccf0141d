from __future__ import annotations

import math
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_apikeys import keys


def test_generated_key_has_prefix_environment_secret_and_checksum() -> None:
    key = keys.generate_key("pk", "live")
    parsed = keys.parse_key(key, "pk")
    assert parsed is not None
    assert key.startswith("pk_live_")
    assert parsed.environment == "live"
    assert len(parsed.secret) == keys.SECRET_LENGTH
    assert key[-keys.CHECKSUM_LENGTH :] == keys.compute_checksum(key[: -keys.CHECKSUM_LENGTH])


def test_secret_carries_at_least_192_bits() -> None:
    assert keys.SECRET_LENGTH * math.log2(len(keys.BASE62_ALPHABET)) >= 192


def test_keys_are_unique_and_spread_over_the_alphabet() -> None:
    generated = {keys.generate_key("pk", "test") for _ in range(2000)}
    assert len(generated) == 2000
    used = set("".join(keys.parse_key(key).secret for key in generated))  # type: ignore[union-attr]
    assert used == set(keys.BASE62_ALPHABET)


@pytest.mark.parametrize("environment", ["live", "test"])
def test_each_environment_round_trips(environment: str) -> None:
    key = keys.generate_key("acme", environment)
    assert keys.parse_key(key, "acme") == keys.ParsedKey("acme", environment, key[10:50])


def _flip(key: str, index: int) -> str:
    replacement = "A" if key[index] != "A" else "B"
    return key[:index] + replacement + key[index + 1 :]


VALID = keys.generate_key("pk", "live")


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "pk_live_",
        VALID[:-1],
        VALID + "0",
        _flip(VALID, 20),  # a typo in the secret
        _flip(VALID, len(VALID) - 1),  # a typo in the checksum
        VALID.replace("_live_", "_prod_"),
        VALID.replace("pk_", "sk_"),
        VALID.upper(),
        VALID[:20] + "é" + VALID[21:],
        VALID[:20] + "\x00" + VALID[21:],
        " " + VALID,
        "x" * 10_000,
    ],
    # Stable names for a random key: every pytest-xdist worker must collect the same tests.
    ids=[
        "empty",
        "prefix-only",
        "one-character-short",
        "one-character-long",
        "typo-in-secret",
        "typo-in-checksum",
        "unknown-environment",
        "other-prefix",
        "upper-case",
        "non-ascii",
        "nul",
        "leading-space",
        "ten-thousand-characters",
    ],
)
def test_malformed_keys_are_refused_without_any_lookup(candidate: str) -> None:
    assert keys.parse_key(candidate, "pk") is None


def test_hint_is_the_last_four_characters() -> None:
    assert keys.key_hint(VALID) == VALID[-4:]


def test_display_prefix_shows_four_secret_characters_only() -> None:
    parsed = keys.parse_key(VALID, "pk")
    assert parsed is not None
    assert parsed.display_prefix == VALID[:12]


@pytest.mark.parametrize("prefix", ["", "PK", "1pk", "p" * 17, "p-k"])
def test_bad_prefixes_are_refused_at_generation(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        keys.generate_key(prefix, "live")


def test_key_shaped_text_is_found_inside_longer_text() -> None:
    assert keys.looks_like_key(f"GET /v1?token={VALID} HTTP/1.1")
    assert not keys.looks_like_key("pk_live_short")


@given(st.text(alphabet=keys.BASE62_ALPHABET + "_", min_size=1, max_size=70))
def test_the_checksum_is_the_crc32_in_six_base62_digits(body: str) -> None:
    """The two-digits-at-a-time checksum writes the CRC32 as :func:`keys.encode_base62` does."""
    expected = keys.encode_base62(zlib.crc32(body.encode("ascii")), keys.CHECKSUM_LENGTH)
    assert keys.compute_checksum(body) == expected


def test_is_well_formed_answers_as_parse_key_does() -> None:
    key = keys.generate_key("pk", "live")
    assert keys.is_well_formed(key, "pk") and keys.is_well_formed(key)
    assert not keys.is_well_formed(key, "sk")
    assert not keys.is_well_formed(key[:-1] + ("A" if key[-1] != "A" else "B"), "pk")
    assert not keys.is_well_formed(key + "x", "pk")

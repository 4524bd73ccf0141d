"""The key format: generation, checksum and validation, with no I/O.

A key reads ``{prefix}_{environment}_{secret}{checksum}``, e.g. ``pk_live_…``:

* ``secret`` is 40 base62 characters drawn with :mod:`secrets` (about 238 bits);
* ``checksum`` is the CRC32 of everything before it, in 6 base62 characters, as GitHub's
  tokens carry. It is not a security measure: it lets the hook refuse typos, truncated keys and
  made-up strings without touching the database, and lets secret scanners recognise our keys.
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass

BASE62_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SECRET_LENGTH = 40
CHECKSUM_LENGTH = 6
ENVIRONMENTS = ("live", "test")
#: How many characters of the secret are stored in clear as ``key_prefix`` to recognise a key.
VISIBLE_SECRET_CHARACTERS = 4
HINT_LENGTH = 4

PREFIX_PATTERN = re.compile(r"[a-z][a-z0-9]{0,15}")
_KEY_PATTERN = re.compile(
    r"(?P<prefix>[a-z][a-z0-9]{0,15})_(?P<environment>live|test)_"
    rf"(?P<secret>[0-9A-Za-z]{{{SECRET_LENGTH}}})(?P<checksum>[0-9A-Za-z]{{{CHECKSUM_LENGTH}}})"
)
#: The longest string that can be a key; anything longer is refused before any regex runs.
MAX_KEY_LENGTH = 16 + 1 + 4 + 1 + SECRET_LENGTH + CHECKSUM_LENGTH


def encode_base62(number: int, width: int) -> str:
    """Write ``number`` in base62, left-padded with zeros to ``width`` characters."""
    digits = []
    while number:
        number, remainder = divmod(number, 62)
        digits.append(BASE62_ALPHABET[remainder])
    return "".join(reversed(digits)).rjust(width, "0")


#: Every two-digit base62 number, "00" to "zz": a checksum is three of them.
_BASE62_PAIRS = tuple(high + low for high in BASE62_ALPHABET for low in BASE62_ALPHABET)


def compute_checksum(body: str) -> str:
    """The checksum that ends a key whose other characters are ``body``.

    ``encode_base62(crc, 6)``, two digits at a time: a CRC32 is below 62**6, and every cache
    miss checks one (the digit loop cost as much as the rest of the format check).
    """
    rest, last = divmod(zlib.crc32(body.encode("ascii")), 62 * 62)
    first, middle = divmod(rest, 62 * 62)
    return _BASE62_PAIRS[first] + _BASE62_PAIRS[middle] + _BASE62_PAIRS[last]


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A key whose format and checksum are right (which says nothing about whether it exists)."""

    prefix: str
    environment: str
    secret: str

    @property
    def display_prefix(self) -> str:
        """What is stored in clear to recognise the key: ``pk_live_AbCd``."""
        return f"{self.prefix}_{self.environment}_{self.secret[:VISIBLE_SECRET_CHARACTERS]}"


def parse_key(candidate: str, expected_prefix: str | None = None) -> ParsedKey | None:
    """Return the parts of ``candidate`` if it is a well-formed key, else ``None``.

    Runs in microseconds and never touches the database; a wrong prefix, environment, length,
    alphabet or checksum all give ``None``.
    """
    match = _well_formed(candidate, expected_prefix)
    if match is None:
        return None
    return ParsedKey(match["prefix"], match["environment"], match["secret"])


def is_well_formed(candidate: str, expected_prefix: str | None = None) -> bool:
    """Whether :func:`parse_key` would accept ``candidate`` (for callers that need no parts)."""
    return _well_formed(candidate, expected_prefix) is not None


def _well_formed(candidate: str, expected_prefix: str | None) -> re.Match[str] | None:
    if len(candidate) > MAX_KEY_LENGTH:
        return None
    match = _KEY_PATTERN.fullmatch(candidate)
    if match is None:
        return None
    if expected_prefix is not None and match["prefix"] != expected_prefix:
        return None
    body_length = len(candidate) - CHECKSUM_LENGTH
    if not secrets.compare_digest(compute_checksum(candidate[:body_length]), match["checksum"]):
        return None
    return match


def generate_key(prefix: str, environment: str) -> str:
    """Make a new random key; the caller shows it once and stores only its hash."""
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(f"key prefix {prefix!r} must be 1-16 lowercase letters or digits")
    if environment not in ENVIRONMENTS:
        raise ValueError(f"environment {environment!r} must be one of {', '.join(ENVIRONMENTS)}")
    secret = "".join(secrets.choice(BASE62_ALPHABET) for _ in range(SECRET_LENGTH))
    body = f"{prefix}_{environment}_{secret}"
    return body + compute_checksum(body)


def key_hint(key: str) -> str:
    """The last characters of a key, safe to show so people can tell their keys apart."""
    return key[-HINT_LENGTH:]


def looks_like_key(text: str) -> bool:
    """Whether ``text`` contains something shaped like a key (for log masking and URL checks)."""
    return KEY_SEARCH_PATTERN.search(text) is not None


#: Finds key-shaped substrings inside longer text; used to mask keys wherever they appear.
KEY_SEARCH_PATTERN = re.compile(
    r"\b[a-z][a-z0-9]{0,15}_(?:live|test)_[0-9A-Za-z]{" + str(SECRET_LENGTH) + r",}"
)

#: Finds JWT-shaped substrings (``eyJ…``, three base64url parts): the access tokens of
#: :mod:`flask_apikeys.tokens`, masked in logs and refused in URLs like keys. A JWT's header
#: and payload are JSON objects, so both parts start with ``eyJ`` (``{"``).
TOKEN_SEARCH_PATTERN = re.compile(r"eyJ[0-9A-Za-z_\-]{2,}\.eyJ[0-9A-Za-z_\-]*\.[0-9A-Za-z_\-]*")


def looks_like_access_token(text: str) -> bool:
    """Whether ``text`` contains something shaped like a JWT access token."""
    return TOKEN_SEARCH_PATTERN.search(text) is not None


def redact_path(path: str) -> str:
    """``path`` with every key and access token in it replaced, for usage and audit rows."""
    return TOKEN_SEARCH_PATTERN.sub("[token]", KEY_SEARCH_PATTERN.sub("[key]", path))

"""Property: no header value ever causes a 5xx or authenticates without a real key."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_apikeys import keys

HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=300,
)
KEY_LIKE = st.builds(
    lambda env, body: f"pk_{env}_{body}",
    st.sampled_from(["live", "test", "prod"]),
    st.text(alphabet=keys.BASE62_ALPHABET, min_size=0, max_size=60),
)
SCHEMES = st.sampled_from(["Bearer ", "Api-Key ", "bearer ", "Basic ", "", "Token "])


@pytest.fixture
def app_config() -> dict[str, Any]:
    """Hundreds of bad keys from one address: the failed-attempt limit (test_limiting) is off."""
    return {"APIKEYS_FAILED_AUTH_LIMIT": None}


@pytest.fixture
def real_key(make_key: Any) -> str:
    """A real key exists, so a false accept would be possible if the checks were loose."""
    return make_key()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    scheme=SCHEMES,
    authorization=st.one_of(HEADER_TEXT, KEY_LIKE),
    x_api_key=st.one_of(st.none(), HEADER_TEXT, KEY_LIKE),
)
def test_random_headers_never_5xx_and_never_authenticate(
    app: Flask, real_key: str, scheme: str, authorization: str, x_api_key: str | None
) -> None:
    headers = {"Authorization": scheme + authorization}
    if x_api_key is not None:
        headers["X-API-Key"] = x_api_key
    response = app.test_client().get("/v1/whoami", headers=headers)
    assert response.status_code in {400, 401}, response.get_data(as_text=True)


@settings(max_examples=300, deadline=None)
@given(candidate=st.one_of(HEADER_TEXT, KEY_LIKE, st.text(max_size=200)))
def test_parse_key_never_raises_and_rejects_random_text(candidate: str) -> None:
    assert keys.parse_key(candidate, "pk") is None

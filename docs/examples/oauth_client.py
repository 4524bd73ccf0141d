"""A client of the API with Authlib: the key is the client secret, tokens renew themselves."""

from __future__ import annotations

from authlib.integrations.requests_client import OAuth2Session


def api_session(key_id: str, key: str, token_url: str, scope: str | None = None) -> OAuth2Session:
    """A requests session that sends a short-lived access token, fetched again when it expires."""
    session = OAuth2Session(
        client_id=key_id,  # the key's id (or its visible prefix, pk_live_AbCd)
        client_secret=key,  # the API key itself, sent with HTTP Basic
        scope=scope,
        token_endpoint=token_url,
        grant_type="client_credentials",
    )
    session.fetch_token()
    return session


# session = api_session(KEY_ID, os.environ["API_KEY"], "https://api.example.com/auth/token",
#                       scope="presentations:read")
# session.get("https://api.example.com/v1/presentations")

"""A client of the API with requests-oauthlib: the key is the client secret, and a new token
is fetched when the current one expires (the client credentials grant has no refresh token,
so requests-oauthlib's ``auto_refresh_url`` cannot renew it)."""

from __future__ import annotations

from typing import Any

from oauthlib.oauth2 import BackendApplicationClient, TokenExpiredError
from requests import Response
from requests_oauthlib import OAuth2Session


class APISession(OAuth2Session):
    """A requests session that sends a short-lived access token, fetched again when it expires."""

    def __init__(self, key_id: str, key: str, token_url: str, scope: str | None = None) -> None:
        # The key's id (or its visible prefix, pk_live_AbCd) is the client id.
        super().__init__(client=BackendApplicationClient(client_id=key_id, scope=scope))
        self.key_id, self.key, self.token_url = key_id, key, token_url
        self.renew()

    def renew(self) -> None:
        """Fetch a new token, the API key itself as the client secret (HTTP Basic)."""
        self.fetch_token(token_url=self.token_url, client_id=self.key_id, client_secret=self.key)

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        try:
            return super().request(method, url, *args, **kwargs)
        except TokenExpiredError:
            self.renew()
            return super().request(method, url, *args, **kwargs)


# session = APISession(KEY_ID, os.environ["API_KEY"], "https://api.example.com/auth/token",
#                      scope="presentations:read")
# session.get("https://api.example.com/v1/presentations")

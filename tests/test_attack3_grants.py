"""The third attack pass on no-escalation: a rate limit is compared on every window it has.

A key whose limit was ``60/minute;1000/day`` could hand out ``60/minute``: the same number a
minute, but 86,400 requests a day instead of 1,000, because only one minute was compared.
"""

from __future__ import annotations

import pytest
from flask import Flask

from .helpers import assert_problem, bearer, new_key


@pytest.mark.parametrize(
    ("granted", "status"),
    [
        ("60/minute", 403),  # no daily cap: more a day than the granter
        ("60/minute;2000/day", 403),
        ("1000/hour", 403),  # all of it may come in one minute
        ("60/minute;1000/day", 201),
        ("30/minute;500/day", 201),
        ("40/hour", 201),
    ],
)
def test_a_key_cannot_hand_out_more_in_any_window_of_its_own_limit(
    app: Flask, granted: str, status: int
) -> None:
    granter = new_key(app, scopes=["*"], rate_limit="60/minute;1000/day")
    response = app.test_client().post(
        f"/admin/organizations/{granter.organization_id}/keys",
        headers=bearer(granter.secret),
        json={"name": "child", "scopes": ["reports:read"], "rate_limit": granted},
    )
    if status == 403:
        assert_problem(response, 403, "insufficient_scope")
    else:
        assert response.status_code == 201, response.get_data(as_text=True)

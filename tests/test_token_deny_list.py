"""The revoked-token list of the process that revokes: a check in flight while a token is
revoked must not leave "not revoked" remembered after it (it would be trusted for
``APIKEYS_CACHE_TTL``, where the docs promise the revoking process refuses the token at once).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from limits.storage import MemoryStorage

from flask_apikeys.revocation import TokenDenyList

#: Long enough that a remembered "not revoked" would outlive the test by far.
ANSWER_TTL = 60


class PausingStorage(MemoryStorage):
    """``limits``' memory storage whose reads can be held after they read: the moment a
    check has read the list and not yet remembered the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.read = threading.Event()
        self.go_on = threading.Event()
        self.hold = False

    def get(self, key: str) -> int:
        value = super().get(key)
        if self.hold:
            self.hold = False
            self.read.set()
            assert self.go_on.wait(10)
        return value


def test_a_check_that_read_before_a_revocation_does_not_outlive_it() -> None:
    storage = PausingStorage()
    errors: tuple[type[BaseException], ...] = (ConnectionError,)
    deny_list = TokenDenyList(lambda: (storage, errors), answer_ttl=ANSWER_TTL, fail_open=False)
    answers: list[Any] = []
    storage.hold = True
    check = threading.Thread(target=lambda: answers.append(deny_list.is_revoked("jti-1")))
    check.start()
    assert storage.read.wait(10)
    deny_list.revoke("jti-1", time.time() + 300)  # between the check's read and its caching
    storage.go_on.set()
    check.join(10)
    assert answers == [False]  # true when it read
    assert deny_list.is_revoked("jti-1") is True
    # Unrelated tokens keep their remembered answers: nothing else changes.
    assert deny_list.is_revoked("jti-2") is False
    assert deny_list.is_revoked("jti-2") is False


def test_a_not_revoked_answer_is_remembered_until_a_revocation() -> None:
    storage = PausingStorage()
    deny_list = TokenDenyList(
        lambda: (storage, (ConnectionError,)), answer_ttl=ANSWER_TTL, fail_open=False
    )
    assert deny_list.is_revoked("jti-3") is False
    storage.incr("apikeys:revoked-token:jti-3", 300)  # another process revoked it
    assert deny_list.is_revoked("jti-3") is False  # trusted for the TTL, as documented
    deny_list.revoke("jti-3", time.time() + 300)  # this process: at once
    assert deny_list.is_revoked("jti-3") is True

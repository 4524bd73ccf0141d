"""State that must not cross a ``fork()``: servers that fork after loading the app
(gunicorn ``--preload``, uWSGI without ``lazy-apps``) copy it into every worker.

:func:`after_fork_in_child` runs a reset in the child process for as long as its object lives
(the hook holds only a weak reference, so apps built and dropped in tests are not kept alive).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import TypeVar

Owner = TypeVar("Owner")


def after_fork_in_child(owner: Owner, reset: Callable[[Owner], None]) -> None:
    """Call ``reset(owner)`` in each forked child while ``owner`` is alive."""
    reference = weakref.ref(owner)

    def reset_in_child() -> None:
        alive = reference()
        if alive is not None:
            reset(alive)

    os.register_at_fork(after_in_child=reset_in_child)

"""Run the suite on every core by default (pytest-xdist), one process when asked.

Loaded as a pytest plugin from ``conftest.py``. Most of a test's time is spent waiting on a
database, a server or a child process, and the machines it runs on have two cores or more: with
a worker per core the suite takes about half as long. ``python -m pytest`` alone gets
``-n auto --dist loadgroup``; an explicit ``-n`` (``-n 0``: one process), ``--dist`` or
``-p no:xdist`` wins. Each worker starts its own servers (``tests/servers.py``) on free ports in
directories of its own, so nothing is shared between workers but the checkout.

Tests that write into the checkout itself (a build's ``build/`` and ``*.egg-info``) carry
``@pytest.mark.xdist_group("checkout")``: ``loadgroup`` runs a group on one worker, in turn.
"""

from __future__ import annotations

import pytest

CHECKOUT_GROUP = "checkout"


def pytest_configure(config: pytest.Config) -> None:
    """Register xdist's marker here too: with ``-p no:xdist`` it must still be known."""
    config.addinivalue_line(
        "markers", "xdist_group(name): run the tests of one group on the same worker, in turn"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Default to a worker per core unless the command line chose (or this is a worker)."""
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return
    if config.getoption("numprocesses", None) is not None or config.getoption("tx", None):
        return
    if config.getoption("dist", "no") != "no":
        return
    config.option.numprocesses = "auto"
    config.option.dist = "loadgroup"

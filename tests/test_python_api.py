"""The Python API is typed: APIKeys' methods are plain methods with the signatures of the parts
of the service layer that do the work, and each operation is written in one part only."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flask import Flask

from flask_apikeys import APIKeys
from flask_apikeys.service import KeyService
from flask_apikeys.service.grants import Grants
from flask_apikeys.service.lifecycle import KeyLifecycle
from flask_apikeys.service.organizations import Organizations
from flask_apikeys.service.reports import UsageReports
from flask_apikeys.service.retention import Retention
from flask_apikeys.service.store import Store
from flask_apikeys.service.verification import Verification

ROOT = Path(__file__).resolve().parent.parent
#: Each operation of the Python API and the part of the service layer that owns it.
OPERATIONS = {
    "create_organization": Organizations,
    "get_organization": Organizations,
    "list_organizations": Organizations,
    "update_organization": Organizations,
    "create_key": KeyLifecycle,
    "list_keys": KeyLifecycle,
    "get_key": KeyLifecycle,
    "update_key": KeyLifecycle,
    "revoke_key": KeyLifecycle,
    "rotate_key": KeyLifecycle,
    "seed": KeyLifecycle,
    "verify_key": Verification,
    "usage_stats": UsageReports,
    "monthly_usage": UsageReports,
}
#: The parts :class:`KeyService` holds, by attribute.
PARTS = {
    "store": Store,
    "organizations": Organizations,
    "grants": Grants,
    "keys": KeyLifecycle,
    "verification": Verification,
    "reports": UsageReports,
    "retention": Retention,
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_the_python_api_has_the_signature_of_the_part_that_does_the_work(name: str) -> None:
    part = inspect.signature(getattr(OPERATIONS[name], name))
    assert inspect.signature(getattr(APIKeys, name)) == part
    assert part.return_annotation not in (inspect.Signature.empty, "Any")


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_the_python_api_methods_are_plain_methods_with_their_own_docs(name: str) -> None:
    method = APIKeys.__dict__[name]
    assert inspect.isfunction(method)
    assert not hasattr(method, "__wrapped__")
    assert method.__doc__ and f"{OPERATIONS[name].__name__}.{name}`" in method.__doc__


def test_the_service_holds_its_parts_and_repeats_none_of_their_operations(app: Flask) -> None:
    service = app.extensions["apikeys"].service
    for attribute, part in PARTS.items():
        assert type(getattr(service, attribute)) is part
        operations = {name for name in vars(part) if not name.startswith("_")}
        assert operations.isdisjoint(dir(KeyService)), f"{part.__name__} written twice"


@pytest.mark.slow
def test_mypy_sees_the_return_types_and_refuses_a_wrong_argument(tmp_path: Path) -> None:
    checked = tmp_path / "use_api.py"
    checked.write_text(
        textwrap.dedent(
            """
            from flask_apikeys import APIKeys, CreatedKey, Organization

            apikeys = APIKeys()
            organization: Organization = apikeys.create_organization("Acme", "a@acme.com")
            created: CreatedKey = apikeys.create_key(organization, "ci", scopes=["a:read"])
            reveal_type(apikeys.rotate_key)
            apikeys.revoke_key(created.api_key.id, reasn="typo")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", str(checked)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert 'Unexpected keyword argument "reasn"' in result.stdout, result.stdout
    assert "-> flask_apikeys.service.lifecycle.CreatedKey" in result.stdout, result.stdout
    assert result.stdout.count("error:") == 1, result.stdout

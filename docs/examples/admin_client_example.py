"""Onboard a customer with a client generated from the admin API's document (docs/admin.rst).

Generate the client first (``tests/test_admin_openapi_clients.py`` does the same and runs this)::

    openapi-python-client generate --url http://localhost:5000/admin/openapi.json \\
        --meta none --output-path admin_client
"""

from __future__ import annotations

from admin_client import AuthenticatedClient
from admin_client.api.keys import create_key
from admin_client.api.organizations import create_organization
from admin_client.models import KeyCreate, Level, OrganizationCreate, Problem


def onboard(base_url: str, admin_key: str, name: str, email: str) -> str:
    """Create an organization and its first key; return the key, which is shown this once."""
    client = AuthenticatedClient(base_url=base_url, token=admin_key)
    organization = create_organization.sync(
        client=client, body=OrganizationCreate(name=name, email=email)
    )
    if isinstance(organization, Problem):  # every error is a declared problem document
        raise RuntimeError(f"{organization.code}: {organization.detail}")
    created = create_key.sync(
        str(organization.id), client=client, body=KeyCreate(name="first", level=Level.READ_WRITE)
    )
    if isinstance(created, Problem):
        raise RuntimeError(f"{created.code}: {created.detail}")
    return created.key

"""``python -m example_app``: create the tables, seed a key, print it once, serve on 127.0.0.1."""

from __future__ import annotations

import os

from . import apikeys, create_app


def main() -> None:
    app = create_app()
    with app.app_context():
        apikeys.create_all()
        organization, created = apikeys.seed()
        if created is None:
            # The seeded key's secret cannot be shown again: rotate it to print a usable one.
            existing = apikeys.list_keys(organization, include_revoked=False)[0]
            seeded = next(key for key in existing if key.name == "Default Test Key")
            created = apikeys.rotate_key(seeded.id, overlap_hours=0, rotated_by="example_app")
        print(f"Seeded key for organization '{organization.slug}' (shown once):")  # noqa: T201
        print(f"  {created.key}")  # noqa: T201
        print("Try:")  # noqa: T201
        print(
            f"  curl -H 'Authorization: Bearer {created.key}' http://127.0.0.1:5000/v1/presentations"
        )  # noqa: T201, E501
    port = int(os.environ.get("PORT", "5000"))
    app.run(host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()

"""The service layer: every operation on organizations and keys, for the Python API, the admin
API and the CLI alike."""

from __future__ import annotations

from .lifecycle import DEFAULT_KEY_NAME, CreatedKey, KeyService

__all__ = ["DEFAULT_KEY_NAME", "CreatedKey", "KeyService"]

"""The version, in a leaf module: the admin API's OpenAPI document shows it too."""

from __future__ import annotations

__version__ = "0.1.0.dev0"

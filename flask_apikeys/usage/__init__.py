"""Usage recording: the row of each authenticated request, its writer, and the statistics."""

from __future__ import annotations

from .rows import record_cost
from .writer import UsageWriter

__all__ = ["UsageWriter", "record_cost"]

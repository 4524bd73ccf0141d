"""Usage recording: the row of each authenticated request, its writer, and the statistics."""

from __future__ import annotations

from .writer import UsageWriter, record_cost

__all__ = ["UsageWriter", "record_cost"]

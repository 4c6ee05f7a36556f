"""``orthokit.align`` — alignment and backward-compatible representations (work in progress on this branch)."""

from __future__ import annotations

from orthokit.align.registry import ALIGN_LOSSES, ALIGNERS, COMPAT_METHODS

__all__ = ["ALIGNERS", "COMPAT_METHODS", "ALIGN_LOSSES"]

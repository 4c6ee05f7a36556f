"""orthokit.vsa (being built for issue #14; the public re-exports are written at integration)."""

from orthokit.vsa.registry import BINDERS

__all__ = ["BINDERS"]

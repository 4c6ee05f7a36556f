"""orthokit.diagnostics (being built for issue #14; the public re-exports are written at integration)."""

from orthokit.diagnostics.registry import DIAGNOSTICS

__all__ = ["DIAGNOSTICS"]

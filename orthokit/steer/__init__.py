"""orthokit.steer (being built for issue #14; the public re-exports are written at integration)."""

from orthokit.steer.registry import STEERERS

__all__ = ["STEERERS"]

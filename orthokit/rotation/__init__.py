"""orthokit.rotation — rotations that make quantization easy (computational invariance, QuaRot/SpinQuant/OstQuant)."""

from __future__ import annotations

__all__: list[str] = []

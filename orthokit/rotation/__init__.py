"""orthokit.rotation — rotations that make quantization easy (computational invariance, QuaRot/SpinQuant/OstQuant)."""

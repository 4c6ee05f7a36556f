"""orthokit.integrations — glue for training frameworks (imported lazily; each submodule needs its framework).

* :mod:`orthokit.integrations.hf` — Hugging Face ``transformers.Trainer``: ``ProjectionCallback`` and
  ``projected_optimizer_for_trainer``.
"""

from __future__ import annotations

__all__ = ["hf"]


def __getattr__(name: str) -> object:
    """``orthokit.integrations.hf`` imports the submodule on first access (it needs ``transformers``)."""
    if name in __all__:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

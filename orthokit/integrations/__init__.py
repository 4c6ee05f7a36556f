"""orthokit.integrations — glue for training frameworks (imported lazily; each submodule needs its framework).

* :mod:`orthokit.integrations.hf` — Hugging Face ``transformers.Trainer``: ``ProjectionCallback``,
  ``projected_optimizer_for_trainer`` and ``optimizer_for_trainer`` (from :mod:`orthokit.integrations.hf_optim`).
"""

from __future__ import annotations

__all__ = ["hf", "hf_optim"]


def __getattr__(name: str) -> object:
    """``orthokit.integrations.hf`` / ``.hf_optim`` import the submodule on first access (they need ``transformers``)."""
    if name in __all__:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""orthokit.integrations — glue for training frameworks (imported lazily; each submodule needs its framework).

* :mod:`orthokit.integrations.hf` — Hugging Face ``transformers.Trainer``: ``ProjectionCallback`` and
  ``projected_optimizer_for_trainer``.
"""

from __future__ import annotations

__all__ = ["hf"]

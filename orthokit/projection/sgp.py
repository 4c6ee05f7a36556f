"""SGP — Scaled Gradient Projection (Saha & Roy, AAAI 2023, arXiv 2302.01386).

Same memory as GPM (energy-thresholded bases of each layer's input representations) plus an importance
``λ_i ∈ [0, 1]`` per basis direction. Instead of removing the whole component of the update in the protected
subspace, SGP removes ``λ_i`` of it along ``m_i``:

    ``ΔW ← ΔW (I − M Λ Mᵀ)``,   ``Λ = diag(λ)``,   ``λ_i = (α+1)σ_i / (α σ_i + max_j σ_j)``  (Eq. 2)

so the direction with the largest singular value is fully protected (``λ = 1``) and weak directions stay
plastic. For task ``t > 1`` old importances are re-scored with the new representations' energy along each old
direction (``‖m_iᵀ R‖``), normalised together with the new directions' singular values and accumulated with
clipping to [0, 1] — as in the reference ``update_SGP``. ``α`` is ``scale_coff`` (10 for CIFAR-100, 5 in the RL
code); thresholds as GPM (``ε = 0.97 + 0.003·t`` on CIFAR-100, ``gpm_eps``/``gpm_eps_inc``).

Example:
    >>> import torch
    >>> from orthokit.projection import SGP
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    >>> sgp = SGP(model, threshold=lambda t, _: 0.97 + 0.003 * t, scale_coff=10.0)
    >>> added = sgp.after_task([torch.randn(32, 8)])
    >>> lam = sgp.memory.importance("0")
    >>> bool(lam.max() == 1.0) and bool((lam > 0).all())     # top direction fully protected
    True
    >>> opt = sgp.wrap(torch.optim.SGD(model.parameters(), lr=0.05))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from orthokit.projection.gpm import GPM
from orthokit.projection.memory import SampleBudget, SubspaceMemory, Threshold
from orthokit.projection.registry import register_projection

__all__ = ["SGP"]


@register_projection(
    "sgp",
    aliases=("scaled_gradient_projection",),
    subspace="activation",
    optimizer_agnostic=True,
    guarantee="soft",
    mode="scaled",
    paper="Saha & Roy, Continual Learning with Scaled Gradient Projection, AAAI 2023 (arXiv 2302.01386)",
)
class SGP(GPM):
    """Scaled Gradient Projection: importance-weighted partial projection ``ΔW(I − MΛMᵀ)``.

    GPM's memory and collection (same ``after_task``, ``freeze_1d``) with importances and ``mode="scaled"``.

    Args:
        model: the network.
        layers: protected layers (names / modules / types; default every Linear/Conv layer).
        threshold: ε (float, per-layer list/dict or ``callable(task_index, layer_name)``).
        scale_coff: SGP's ``α`` in ``λ = (α+1)σ/(ασ + max σ)``; larger → closer to GPM.
        max_samples: examples for the representation matrices (SGP CIFAR-100: 125).
        criterion: ``"minimal"`` (default, the paper's energy rule) or ``"gpm_code"`` (reference counting).
        freeze_1d, embeddings: as :class:`~orthokit.projection.gpm.GPM`.
        bias: bias policy of :class:`SubspaceMemory`.
        forward: ``callable(model, batch)`` used during collection.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(6, 3))
        >>> sgp = SGP(model, threshold=0.97)
        >>> added = sgp.after_task([torch.randn(20, 6)])
        >>> opt = sgp.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3))
        >>> opt.mode
        'scaled'
    """

    mode = "scaled"

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        threshold: Threshold = 0.97,
        scale_coff: float = 10.0,
        max_samples: SampleBudget = 125,
        criterion: str = "minimal",
        freeze_1d: str = "norm",
        embeddings: str = "rows",
        bias: str = "augment",
        forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> None:
        if scale_coff < 0:
            raise ValueError(f"scale_coff must be >= 0, got {scale_coff}")
        self.scale_coff = scale_coff
        super().__init__(
            model,
            layers,
            threshold=threshold,
            max_samples=max_samples,
            criterion=criterion,
            freeze_1d=freeze_1d,
            embeddings=embeddings,
            bias=bias,
            forward=forward,
        )

    def _new_memory(self, model: nn.Module, layers: Any, bias: str) -> SubspaceMemory:
        return SubspaceMemory(model, layers, bias=bias, importance_alpha=self.scale_coff)

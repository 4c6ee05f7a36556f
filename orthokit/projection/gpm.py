"""GPM — Gradient Projection Memory (Saha, Garg & Roy, ICLR 2021, arXiv 2103.09762).

After each task, GPM stores an orthonormal basis ``M_l`` of every layer's input representations chosen by the
energy criterion ``‖M_lᵀ R_l‖²/‖R_l‖² ≥ ε_l`` (Eq. 5 for the first task, Eq. 8–9 incrementally), and trains later
tasks with the right-projected update ``ΔW_l ← ΔW_l (I − M_l M_lᵀ)``, so the layer's outputs on old inputs
(which lie in ``span(M_l)`` up to ``1 − ε``) are unchanged. Reference settings: pMNIST MLP 784-100-100-10,
ε = [0.95, 0.99, 0.99], 300 samples, SGD lr 0.01; CIFAR-100 ε = 0.97 + 0.003·t (threshold schedule as a callable).

Unlike the reference code (plain SGD, gradient projection) the default here projects the *applied* update, so any
optimizer (AdamW with weight decay, Muon) keeps the guarantee; ``where="gradient"`` reproduces the original.

Example:
    >>> from orthokit.projection import GPM
    >>> gpm = GPM(model, layers=nn.Linear, threshold=[0.95, 0.99, 0.99], max_samples=300)
    >>> for t, (train_loader, memory_batches) in enumerate(tasks):
    ...     opt = gpm.wrap(torch.optim.SGD(model.parameters(), lr=0.01))   # fresh optimizer per task
    ...     train(model, opt, train_loader)
    ...     gpm.after_task(memory_batches)
    >>> print(gpm.memory)   # k/n per layer
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from orthokit.projection.memory import SubspaceMemory, Threshold
from orthokit.projection.registry import ProjectionMethod, register_projection

__all__ = ["GPM"]


@register_projection(
    "gpm",
    aliases=("gradient_projection_memory",),
    subspace="activation",
    optimizer_agnostic=True,
    guarantee="exact",
    mode="hard",
    paper="Saha, Garg & Roy, Gradient Projection Memory for Continual Learning, ICLR 2021 (arXiv 2103.09762)",
)
class GPM(ProjectionMethod):
    """Gradient Projection Memory: hard projection of every protected layer's update off its old-input basis.

    Args:
        model: the network.
        layers: protected layers (names / modules / types; default every Linear/Conv layer).
        threshold: ε — float, per-layer list/dict, or ``callable(task_index, layer_name)`` (e.g.
            ``lambda t, _: 0.97 + 0.003 * t`` for GPM's CIFAR-100 schedule).
        max_samples: examples used to build the representation matrices (GPM pMNIST: 300).
        criterion: ``"gpm"`` (reference code's counting, default) or ``"minimal"``.
        bias: bias policy of :class:`SubspaceMemory` (``"augment"`` default).
        forward: ``callable(model, batch)`` used during collection (default: ``model(x)``).

    Example:
        >>> gpm = GPM(model, threshold=0.97)
        >>> gpm.after_task([x_old])                       # protect what the model saw
        >>> opt = gpm.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3))
    """

    mode = "hard"

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        threshold: Threshold = 0.97,
        max_samples: int | None = 300,
        criterion: str = "gpm",
        bias: str = "augment",
        forward: Callable[[nn.Module, Any], Any] | None = None,
    ) -> None:
        self.model = model
        self.memory = SubspaceMemory(model, layers, bias=bias)
        self.threshold = threshold
        self.max_samples = max_samples
        self.criterion = criterion
        self.forward = forward

    def after_task(self, batches: Iterable[Any], **kwargs: Any) -> dict[str, int]:
        """Extend the bases with the finished task's representations (keyword overrides: ``threshold``,
        ``max_samples``, ``task_index``). Returns the number of directions added per layer."""
        return self.memory.collect_activations(
            self.model,
            batches,
            kwargs.pop("threshold", self.threshold),
            max_samples=kwargs.pop("max_samples", self.max_samples),
            criterion=self.criterion,
            forward=self.forward,
            **kwargs,
        )

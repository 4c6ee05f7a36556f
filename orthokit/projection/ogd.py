"""OGD — Orthogonal Gradient Descent (Farajtabar, Azizan, Mott & Li, AISTATS 2020, arXiv 1910.07104).

After each task OGD stores the gradients of the **model output** (not the loss) with respect to all protected
parameters, for a sample of the task's examples, orthonormalised into a flattened basis ``S ∈ R^{|θ|×K}``. Later
updates are projected, ``Δθ ← Δθ − S Sᵀ Δθ``, so the outputs on the stored examples do not change to first order
(``f(x; θ + Δθ) − f(x; θ) = ∇_θ f(x)ᵀ Δθ + O(‖Δθ‖²) = O(‖Δθ‖²)``).

Variants of the output scalar (``variant=``): ``"gtl"`` — the ground-truth logit ``f_y(x)`` (OGD-GTL, the one
used by every implementation: sketchogd, infty, cl-gym), ``"ave"`` — the mean logit, ``"all"`` — every logit.
``rank`` turns it into PCA-OGD (keep the top ``rank`` principal directions of each task's gradients). Memory is
``|θ|·K`` floats — the limitation GPM was designed to avoid (reference §2, §11: 358 MB for 1000 vectors of the
pMNIST MLP); prefer GPM for anything but small models.

Example:
    >>> import torch
    >>> from orthokit.projection import OGD
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> ogd = OGD(model, samples_per_task=20)
    >>> task1 = [(torch.randn(10, 4), torch.randint(0, 3, (10,))) for _ in range(3)]   # batches of (x, y)
    >>> ogd.after_task(task1)                        # 20 of the 30 examples
    {'__model__': 20}
    >>> opt = ogd.wrap(torch.optim.SGD(model.parameters(), lr=1e-3))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from orthokit.projection.memory import SubspaceMemory
from orthokit.projection.registry import ProjectionMethod, register_projection

__all__ = ["OGD", "output_scalars"]

_VARIANTS = ("gtl", "ave", "all")


def output_scalars(logits: torch.Tensor, targets: torch.Tensor | None, variant: str = "gtl") -> torch.Tensor:
    """The per-example output scalars whose gradients OGD stores.

    Args:
        logits: ``[B, C]`` model outputs.
        targets: ``[B]`` class indices (required for ``"gtl"``).
        variant: ``"gtl"`` → ``logits[b, y_b]`` (``[B]``); ``"ave"`` → ``logits[b].mean()`` (``[B]``);
            ``"all"`` → every logit (``[B·C]``).

    Example:
        >>> output_scalars(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1, 0]))
        tensor([2., 3.])
    """
    if logits.dim() != 2:
        raise ValueError(f"OGD needs [batch, classes] outputs, got shape {tuple(logits.shape)}")
    if variant == "gtl":
        if targets is None:
            raise ValueError("variant='gtl' needs targets (batches of (x, y))")
        return logits.gather(1, targets.reshape(-1, 1).long()).squeeze(1)
    if variant == "ave":
        return logits.mean(dim=1)
    if variant == "all":
        return logits.reshape(-1)
    raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")


@register_projection(
    "ogd",
    aliases=("orthogonal_gradient_descent",),
    subspace="gradient",
    optimizer_agnostic=True,
    guarantee="first_order",
    mode="hard",
    paper="Farajtabar, Azizan, Mott & Li, Orthogonal Gradient Descent for Continual Learning, AISTATS 2020 "
    "(arXiv 1910.07104)",
)
class OGD(ProjectionMethod):
    """Orthogonal Gradient Descent: flattened basis of model-output gradients, projected out of every update.

    Args:
        model: the network; its forward must return ``[B, C]`` logits (or pass ``output_fn``).
        layers: protected layers (default every Linear/Conv layer); their weights and biases form ``θ``.
        samples_per_task: number of examples whose output gradients are stored per task (infty default 20; the
            paper uses a few hundred).
        variant: ``"gtl"`` (default), ``"ave"`` or ``"all"`` (see :func:`output_scalars`).
        rank: PCA-OGD — keep only the top ``rank`` new directions per task (``None``: all, plain OGD).
        output_fn: ``callable(model, batch) -> Tensor`` of per-example scalars overriding ``variant``.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> ogd = OGD(model, samples_per_task=100)
        >>> ogd.after_task([(torch.randn(6, 4), torch.randint(0, 3, (6,)))])
        {'__model__': 6}
        >>> opt = ogd.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3))
    """

    mode = "hard"

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        samples_per_task: int = 20,
        variant: str = "gtl",
        rank: int | None = None,
        output_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    ) -> None:
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
        if samples_per_task < 1:
            raise ValueError(f"samples_per_task must be >= 1, got {samples_per_task}")
        self.model = model
        self.memory = SubspaceMemory(model, layers, bias="ignore")
        self.samples_per_task = samples_per_task
        self.variant = variant
        self.rank = rank
        self.output_fn = output_fn

    def _scalars(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if self.output_fn is not None:
            return self.output_fn(model, batch)
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            x, y = batch[0], batch[1]
        elif isinstance(batch, torch.Tensor):
            x, y = batch, None
        else:
            raise TypeError("OGD batches must be (x, y) tuples or tensors; pass output_fn for other formats")
        out = model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return output_scalars(out, y, self.variant)

    def after_task(
        self, batches: Iterable[Any], *, max_samples: int | None = None, rank: int | None = None
    ) -> dict[str, int]:
        """Store the output gradients of the first ``samples_per_task`` examples (override with
        ``max_samples=``; with ``variant="all"`` every logit of those examples gives one vector; ``rank``
        overrides the PCA-OGD rank for this call). Returns ``{"__model__": directions added}``."""
        n = int(self.samples_per_task if max_samples is None else max_samples)
        return self.memory.collect_gradients(
            self.model,
            self._scalars,
            self._limit(batches, n),
            rank=self.rank if rank is None else rank,
            scope="model",
        )

    @staticmethod
    def _limit(batches: Iterable[Any], n: int) -> Iterable[Any]:
        """Yield batches truncated to ``n`` examples in total."""
        from orthokit.projection.memory import _batch_size, _truncate

        seen = 0
        for b in batches:
            if seen >= n:
                return
            bs = _batch_size(b)
            if seen + bs > n:
                b = _truncate(b, n - seen)
                bs = n - seen
            seen += bs
            yield b

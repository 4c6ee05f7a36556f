"""GPM — Gradient Projection Memory (Saha, Garg & Roy, ICLR 2021, arXiv 2103.09762).

After each task, GPM stores an orthonormal basis ``M_l`` of every layer's input representations chosen by the
energy criterion ``‖M_lᵀ R_l‖²/‖R_l‖² ≥ ε_l`` (Eq. 5 for the first task, Eq. 8–9 incrementally), and trains later
tasks with the right-projected update ``ΔW_l ← ΔW_l (I − M_l M_lᵀ)``, so the layer's outputs on old inputs
(which lie in ``span(M_l)`` up to ``1 − ε``) are unchanged. Reference settings: pMNIST MLP 784-100-100-10,
ε = [0.95, 0.99, 0.99], 300 samples, SGD lr 0.01; CIFAR-100 ε = 0.97 + 0.003·t (threshold schedule as a callable).

Unlike the reference code (plain SGD, gradient projection) the default here projects the *applied* update, so any
optimizer (AdamW with weight decay, Muon) keeps the guarantee; ``where="gradient"`` reproduces the original.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from orthokit.projection import GPM
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.ReLU(), nn.Linear(16, 4, bias=False))
    >>> gpm = GPM(model, layers=nn.Linear, threshold=[0.999, 0.99], max_samples=300)
    >>> tasks = [torch.randn(64, 3) @ torch.randn(3, 8) for _ in range(2)]   # each task: a 3-dim input subspace
    >>> for x in tasks:
    ...     opt = gpm.wrap(torch.optim.SGD(model.parameters(), lr=0.01))   # fresh optimizer per task
    ...     for _ in range(5):
    ...         opt.zero_grad(); model(x).pow(2).mean().backward(); opt.step()
    ...     added = gpm.after_task([x])
    >>> [(s.name, s.k, s.n) for s in gpm.summary()][0]   # layer 0 holds both 3-dim subspaces
    ('0', 6, 8)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from orthokit.projection.memory import SampleBudget, SubspaceMemory, Threshold, check_criterion
from orthokit.projection.registry import FREEZE_1D, ProjectionMethod, one_d_parameters, register_projection

__all__ = ["GPM", "EMBEDDINGS"]

EMBEDDINGS = ("rows", "freeze", "none")


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
        criterion: ``"minimal"`` (default: the smallest basis holding ≥ ε of the energy, paper Eq. 8–9) or
            ``"gpm_code"`` (the reference code's first-task count, one direction fewer).
        freeze_1d: ``"norm"`` (default, as GPM's code: normalization-layer 1-D parameters — LayerNorm/RMSNorm
            gains and biases, incl. classes named ``*Norm`` such as ``LlamaRMSNorm`` — fixed once a basis exists),
            ``"all"`` (every 1-D parameter the memory does not project) or ``"none"``.
        embeddings: ``"rows"`` (default: every ``nn.Embedding`` — token and position tables — is protected by
            rows: the ids the old tasks looked up during :meth:`after_task` cannot move, new ids stay trainable),
            ``"freeze"`` (embedding tables fixed once a basis exists) or ``"none"`` (left free: measured on the
            tiny-Llama two-corpus task, free embeddings carry most of the forgetting that remains — see
            docs/projection/llm_recipe.md). A tied LM head (same parameter) is covered by the same rows.
        bias: bias policy of :class:`SubspaceMemory` (``"augment"`` default).
        forward: ``callable(model, batch)`` used during collection (default: ``model(x)``).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(6, 3))
        >>> x_old = torch.randn(20, 2) @ torch.randn(2, 6)
        >>> gpm = GPM(model, threshold=0.999)
        >>> gpm.after_task([x_old])                       # 2 input dims + the bias's constant
        {'0': 3}
        >>> opt = gpm.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1))
    """

    mode = "hard"

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        threshold: Threshold = 0.97,
        max_samples: SampleBudget = 300,
        criterion: str = "minimal",
        freeze_1d: str = "norm",
        bias: str = "augment",
        forward: Callable[[nn.Module, Any], Any] | None = None,
        embeddings: str = "rows",
    ) -> None:
        check_criterion(criterion)
        if freeze_1d not in FREEZE_1D:
            raise ValueError(f"freeze_1d must be 'norm', 'all' or 'none', got {freeze_1d!r}")
        if embeddings not in EMBEDDINGS:
            raise ValueError(f"embeddings must be 'rows', 'freeze' or 'none', got {embeddings!r}")
        self.model = model
        self.memory = self._new_memory(model, layers, bias)
        self.embeddings = embeddings
        if embeddings == "rows":
            self.memory.protect_embeddings(nn.Embedding)
        self.threshold = threshold
        self.max_samples = max_samples
        self.criterion = criterion
        self.freeze_1d = freeze_1d
        self.forward = forward

    def _new_memory(self, model: nn.Module, layers: Any, bias: str) -> SubspaceMemory:
        """The memory this method keeps (SGP adds importances)."""
        return SubspaceMemory(model, layers, bias=bias)

    def after_task(
        self,
        batches: Iterable[Any],
        *,
        threshold: Threshold | None = None,
        max_samples: SampleBudget | str = "default",
        task_index: int | None = None,
    ) -> dict[str, int]:
        """Extend the bases with the finished task's representations (``threshold``/``max_samples`` override
        the constructor's for this call). Returns the number of directions added per layer."""
        return self.memory.collect_activations(
            self.model,
            batches,
            self.threshold if threshold is None else threshold,
            max_samples=self.max_samples
            if isinstance(max_samples, str) and max_samples == "default"
            else max_samples,  # type: ignore[arg-type]
            criterion=self.criterion,
            forward=self.forward,
            task_index=task_index,
        )

    def frozen_parameters(self) -> list[nn.Parameter]:
        """Parameters kept fixed once the memory holds a basis: 1-D parameters per ``freeze_1d`` (see
        :func:`~orthokit.projection.registry.one_d_parameters`) and, with ``embeddings="freeze"``, the embedding
        tables."""
        out = one_d_parameters(self.model, self.memory, self.freeze_1d)
        if getattr(self, "embeddings", "rows") == "freeze":
            seen = {id(p) for p in out}
            for m in self.model.modules():
                if isinstance(m, nn.Embedding) and id(m.weight) not in seen:
                    seen.add(id(m.weight))
                    out.append(m.weight)
        return out

"""OSFT — Orthogonal-Subspace Fine-Tuning ("Sculpting Subspaces", Nayak et al., arXiv 2504.07097).

Each targeted weight ``W ∈ R^{m×n}`` is split by its SVD ``W = U Σ Vᵀ`` into a frozen high part (top-k
singular triplets, the directions that encode prior knowledge) and a trainable low part holding *all*
remaining ``r = min(m, n) − k`` directions:

.. math::

    W = U_h \\operatorname{diag}(S_h) V_h + U_l \\operatorname{diag}(S_l) V_l,
    \\qquad U_h^\\top U_l = 0,\\; V_l V_h^\\top = 0 .

Training updates ``U_l, S_l, V_l`` with gradients projected to the complements
(``dU_l ← dU_l − U_h U_hᵀ dU_l``, ``dV_l ← dV_l − dV_l V_hᵀ V_h``) and, after every optimiser step, the
*parameters* ``U_l, V_l`` are re-projected (mini_trainer PR #16: "to ensure perfect orthogonality"), in
float64/float32 regardless of the model dtype (PR #23). Hence ``W V_hᵀ = U_h diag(S_h)`` and
``U_hᵀ W = diag(S_h) V_h`` hold exactly during fine-tuning: the preserved singular triplets are untouched.

Rank selection: ``preserve_ratio`` (uniform fraction of ``min(m, n)``; the released code's
``rank_ratio = 0.5`` default), ``rank`` (absolute, PEFT's ``effective_rank``), ``rank_pattern`` per-module
overrides, or ``energy`` — an adaptive per-matrix rule keeping the smallest ``k`` with
``Σ_{i≤k} σ_i² ≥ energy·‖W‖_F²`` (orthokit's spectrum-adaptive variant; the paper's own adaptive rule uses a
layer-importance score from input–output similarity, not reproduced here).

Reference: P. Nayak, K. Killamsetty, …, A. Srivastava, "Sculpting Subspaces: Constrained Full Fine-Tuning
in LLMs for Continual Learning", arXiv:2504.07097 (ICLR 2026); mini_trainer ``osft_utils.py``;
PEFT ``tuners/osf``.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> mods = apply_osft(model, preserve_ratio=0.5)
    >>> opt = OSFTOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), mods)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from orthokit.projection.registry import ProjectionMethod, register_projection

__all__ = ["OSFTLinear", "apply_osft", "OSFTOptimizer", "OSFTProjection", "select_rank"]


def select_rank(
    S: torch.Tensor, preserve_ratio: float | None = None, rank: int | None = None, energy: float | None = None
) -> int:
    """Number ``k`` of top singular directions to freeze (exactly one of the three rules).

    Args:
        S: singular values (descending).
        preserve_ratio: ``k = floor(ratio · len(S))``.
        rank: ``k = rank`` (clamped to ``len(S)``).
        energy: smallest ``k`` with ``Σ_{i≤k} σ_i² / Σ σ_i² ≥ energy``.

    Example:
        >>> select_rank(torch.tensor([3.0, 1.0, 0.0]), energy=0.9)
        1
    """
    given = [v is not None for v in (preserve_ratio, rank, energy)]
    if sum(given) != 1:
        raise ValueError("give exactly one of preserve_ratio, rank, energy")
    d = S.numel()
    if preserve_ratio is not None:
        if not 0.0 <= preserve_ratio <= 1.0:
            raise ValueError(f"preserve_ratio must be in [0, 1], got {preserve_ratio}")
        return int(preserve_ratio * d)
    if rank is not None:
        if not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be a non-negative int, got {rank!r}")
        return min(rank, d)
    assert energy is not None
    if not 0.0 <= energy <= 1.0:
        raise ValueError(f"energy must be in [0, 1], got {energy}")
    e = (S.double() ** 2).cumsum(0)
    if float(e[-1]) == 0.0:
        return 0
    if energy == 0.0:
        return 0
    frac = e / e[-1]
    # first index whose cumulative energy fraction reaches ``energy`` (1e-12 slack for rounding), as a count
    target = torch.tensor(energy - 1e-12, dtype=frac.dtype)
    return min(int(torch.searchsorted(frac, target).item()) + 1, d)


class OSFTLinear(nn.Module):
    """A linear layer whose weight is ``U_h diag(S_h) V_h + U_l diag(S_l) V_l`` with a frozen high part.

    Args:
        linear: the ``nn.Linear`` to decompose (its weight is copied; bias stays trainable).
        k: number of preserved (frozen) top singular directions.
        svd_dtype: dtype for the SVD and the projections (float64 default for exactness).

    Example:
        >>> layer = OSFTLinear(torch.nn.Linear(8, 6), k=3)
        >>> torch.allclose(layer.weight, layer.weight)  # reconstructed weight
        True
    """

    def __init__(self, linear: nn.Linear, k: int, svd_dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"OSFTLinear wraps nn.Linear, got {type(linear).__name__}")
        W = linear.weight.detach()
        m, n = W.shape
        d = min(m, n)
        if not 0 <= k <= d:
            raise ValueError(f"k must be in [0, min(m, n)={d}], got {k}")
        self.in_features, self.out_features, self.k = n, m, k
        self.svd_dtype = svd_dtype
        U, S, Vh = torch.linalg.svd(W.to(svd_dtype), full_matrices=False)
        dt, dev = W.dtype, W.device
        self.register_buffer("U_high", U[:, :k].to(dt).contiguous())
        self.register_buffer("S_high", S[:k].to(dt).contiguous())
        self.register_buffer("V_high", Vh[:k].to(dt).contiguous())
        self.U_low = nn.Parameter(U[:, k:].to(dt).contiguous())
        self.S_low = nn.Parameter(S[k:].to(dt).contiguous())
        self.V_low = nn.Parameter(Vh[k:].to(dt).contiguous())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self._hooks = [
            self.U_low.register_hook(self._project_dU),
            self.V_low.register_hook(self._project_dV),
        ]
        del dev

    @property
    def weight(self) -> torch.Tensor:
        """The current reconstructed weight ``[out, in]``."""
        hi = (self.U_high * self.S_high) @ self.V_high
        lo = (self.U_low * self.S_low) @ self.V_low
        return hi + lo

    def _project_dU(self, g: torch.Tensor) -> torch.Tensor:
        Uh = self.U_high.to(self.svd_dtype)
        gg = g.to(self.svd_dtype)
        return (gg - Uh @ (Uh.T @ gg)).to(g.dtype)

    def _project_dV(self, g: torch.Tensor) -> torch.Tensor:
        Vh = self.V_high.to(self.svd_dtype)
        gg = g.to(self.svd_dtype)
        return (gg - (gg @ Vh.T) @ Vh).to(g.dtype)

    @torch.no_grad()
    def project_(self) -> None:
        """Re-project ``U_low``/``V_low`` onto the complements of ``U_high``/``V_high`` (exact orthogonality)."""
        self.U_low.copy_(self._project_dU(self.U_low))
        self.V_low.copy_(self._project_dV(self.V_low))

    def orthogonality_error(self) -> float:
        """``max(‖U_hᵀU_l‖_max, ‖V_l V_hᵀ‖_max)`` — 0 in exact arithmetic."""
        with torch.no_grad():
            a = (
                (self.U_high.double().T @ self.U_low.double()).abs().max()
                if self.k and self.U_low.numel()
                else 0
            )
            b = (
                (self.V_low.double() @ self.V_high.double().T).abs().max()
                if self.k and self.V_low.numel()
                else 0
            )
        return float(max(float(a), float(b)))

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the current weight (for export)."""
        W = self.weight.detach()
        lin = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, dtype=W.dtype, device=W.device
        )
        with torch.no_grad():
            lin.weight.copy_(W)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, preserved={self.k}, trainable_rank={self.S_low.numel()}"


def apply_osft(
    model: nn.Module,
    preserve_ratio: float | None = 0.5,
    rank: int | None = None,
    energy: float | None = None,
    targets: Callable[[str, nn.Module], bool] | Iterable[str] | None = None,
    rank_pattern: dict[str, int] | None = None,
) -> dict[str, OSFTLinear]:
    """Replace targeted ``nn.Linear`` modules of ``model`` in place by :class:`OSFTLinear`.

    Args:
        model: the network (modified in place).
        preserve_ratio / rank / energy: the default preserved-rank rule (see :func:`select_rank`); pass
            ``preserve_ratio=None`` when using ``rank`` or ``energy``.
        targets: module names to convert, or a predicate ``(name, module) -> bool`` (default: every Linear).
        rank_pattern: ``{module_name: k}`` overrides.

    Returns:
        ``{name: OSFTLinear}`` of the converted modules.
    """
    if rank is not None or energy is not None:
        preserve_ratio = None
    names = None
    pred: Callable[[str, nn.Module], bool]
    if targets is None:
        pred = lambda n, m: True
    elif callable(targets):
        pred = targets
    else:
        names = set(targets)
        pred = lambda n, m: n in names
    found: dict[str, OSFTLinear] = {}
    todo = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and pred(n, m)]
    if names is not None:
        missing = names - {n for n, _ in todo}
        if missing:
            raise ValueError(f"OSFT targets not found as nn.Linear modules: {sorted(missing)}")
    if not todo:
        raise ValueError("apply_osft found no nn.Linear module to convert")
    for name, mod in todo:
        S = torch.linalg.svdvals(mod.weight.detach().double())
        if rank_pattern and name in rank_pattern:
            k = select_rank(S, rank=rank_pattern[name])
        else:
            k = select_rank(S, preserve_ratio=preserve_ratio, rank=rank, energy=energy)
        new = OSFTLinear(mod, k)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        found[name] = new
    return found


class OSFTOptimizer:
    """Wraps an optimiser so that every step is followed by the exact re-projection of all OSFT modules.

    Example:
        >>> opt = OSFTOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-4), apply_osft(model))
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, modules: dict[str, OSFTLinear] | Iterable[OSFTLinear]
    ):
        self.optimizer = optimizer
        self.modules = list(modules.values()) if isinstance(modules, dict) else list(modules)
        if not all(isinstance(m, OSFTLinear) for m in self.modules):
            raise TypeError("modules must be OSFTLinear instances (from apply_osft)")

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimiser's parameter groups."""
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the wrapped optimiser's gradients."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Step, then re-project every OSFT module."""
        loss = self.optimizer.step(closure)
        for m in self.modules:
            m.project_()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimiser's state."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.optimizer.load_state_dict(state)


@register_projection(
    "osft",
    aliases=("sculpting_subspaces",),
    subspace="weight",
    optimizer_agnostic=True,
    guarantee="exact",
    paper="Nayak et al., Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs for Continual Learning, "
    "arXiv 2504.07097 (ICLR 2026)",
)
class OSFTProjection(ProjectionMethod):
    """OSFT without re-parametrisation: freeze each weight's top singular directions through the update.

    ``after_task()`` stores the top-k singular pairs ``(U_h, V_h)`` of every protected weight (the current
    weights; data are not needed, batches are ignored) and ``wrap(optimizer)`` projects every applied update
    two-sided, ``ΔW ← (I − U_hU_hᵀ) ΔW (I − V_hV_hᵀ)``, so ``W V_hᵀ = U_h diag(S_h)`` and ``U_hᵀ W = diag(S_h) V_h``
    stay exact — the same invariant as :class:`OSFTLinear` (which trains the factored complement instead).

    Args:
        model: the network.
        layers: protected layers (as for :class:`SubspaceMemory`).
        preserve_ratio: fraction of ``min(m, n)`` preserved per weight (released code: 0.5).
        rank: absolute preserved rank instead (PEFT ``effective_rank``).

    Example:
        >>> osft = OSFTProjection(model, preserve_ratio=0.5)
        >>> osft.after_task()
        >>> opt = osft.wrap(torch.optim.AdamW(model.parameters(), lr=1e-5))
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        preserve_ratio: float | None = 0.5,
        rank: int | None = None,
    ) -> None:
        from orthokit.projection.memory import SubspaceMemory

        if rank is not None:
            preserve_ratio = None
        if preserve_ratio is None and rank is None:
            raise ValueError("give preserve_ratio or rank")
        if preserve_ratio is not None and not 0.0 < preserve_ratio <= 1.0:
            raise ValueError(f"preserve_ratio must be in (0, 1], got {preserve_ratio}")
        self.model = model
        self.memory = SubspaceMemory(model, layers, bias="augment")
        self.preserve_ratio, self.rank = preserve_ratio, rank

    def after_task(self, batches: Iterable[Any] = (), **kwargs: Any) -> dict[str, int]:
        """(Re)compute the preserved singular directions of the current weights."""
        return self.memory.collect_weights(rank=self.rank, rank_ratio=self.preserve_ratio)

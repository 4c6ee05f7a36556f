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

Across tasks the preserved rank **grows**: directions preserved for earlier tasks stay preserved and the top
singular directions of the residual ``(I − U_hU_hᵀ) W (I − V_hᵀV_h)`` are added (:func:`grow_preserved`,
:meth:`OSFTLinear.grow`, :meth:`OSFTProjection.after_task`), as the method and PEFT's OSF docs require
(``r += …`` between tasks). Recomputing a fixed top-k of the new weights instead (orthokit ≤ 0.x) can drop
earlier tasks' directions once the trained complement outgrows them; ``across_tasks="recompute"`` keeps that.

Reference: P. Nayak, K. Killamsetty, …, A. Srivastava, "Sculpting Subspaces: Constrained Full Fine-Tuning
in LLMs for Continual Learning", arXiv:2504.07097 (ICLR 2026); mini_trainer ``osft_utils.py``;
PEFT ``tuners/osf``.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> mods = apply_osft(model, preserve_ratio=0.5)
    >>> opt = OSFTOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), mods)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from orthokit.projection._wrapper import WrappedOptimizer
from orthokit.projection.registry import ProjectionMethod, register_projection

__all__ = ["OSFTLinear", "apply_osft", "OSFTOptimizer", "OSFTProjection", "select_rank", "grow_preserved"]


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


def grow_preserved(
    W: torch.Tensor, U: torch.Tensor | None, V: torch.Tensor | None, count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Preserved directions after one more task: the old ones plus the top ``count`` of the residual.

    ``W`` is ``[m, n]``; ``U`` ``[m, k]`` and ``V`` ``[n, k]`` are the preserved left/right singular vectors
    (``None`` or ``k = 0`` on the first task). The residual ``R = (I − UUᵀ) W (I − VVᵀ)`` is orthogonal to the old
    directions on both sides, so its top singular vectors extend ``(U, V)`` without touching them. Computed in
    float64. Returns ``(U', V', S_new)`` with ``U' = [U, U_R[:, :c]]``, ``V' = [V, V_R[:, :c]]`` and the ``c``
    new singular values, ``c = min(count, min(m, n) − k)``.

    Example:
        >>> W = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
        >>> U, V, S = grow_preserved(W, None, None, 1)
        >>> U2, V2, S2 = grow_preserved(W + 10 * torch.diag(torch.tensor([0.0, 0.0, 1.0])), U, V, 1)
        >>> U2.abs().T, S2          # e1 stays, e3 (now the largest free direction) is added
        (tensor([[1., 0., 0.],
                [0., 0., 1.]], dtype=torch.float64), tensor([11.], dtype=torch.float64))
    """
    if W.dim() != 2:
        raise ValueError(f"W must be a matrix, got shape {tuple(W.shape)}")
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative int, got {count!r}")
    m, n = W.shape
    A = W.detach().to(torch.float64)
    k = 0 if U is None else int(U.shape[1])
    if k:
        assert U is not None and V is not None
        if U.shape != (m, k) or V.shape != (n, k):
            raise ValueError(f"U must be [{m}, k] and V [{n}, k], got {tuple(U.shape)} and {tuple(V.shape)}")
        U64, V64 = U.detach().to(A), V.detach().to(A)
        A = A - U64 @ (U64.T @ A)
        A = A - (A @ V64) @ V64.T
    c = min(count, min(m, n) - k)
    Ur, Sr, Vhr = torch.linalg.svd(A, full_matrices=False)
    newU, newV = Ur[:, :c], Vhr[:c].T
    if k:
        for _ in range(2):  # keep the new columns orthogonal to the old ones at machine precision
            newU = newU - U64 @ (U64.T @ newU)
            newV = newV - V64 @ (V64.T @ newV)
        # a zero residual direction may be an arbitrary null vector overlapping the old span: drop those
        keep = (newU.norm(dim=0) > 0.5) & (newV.norm(dim=0) > 0.5)
        newU, newV = newU[:, keep], newV[:, keep]
        newU = newU / newU.norm(dim=0)
        newV = newV / newV.norm(dim=0)
        return torch.cat([U64, newU], 1), torch.cat([V64, newV], 1), Sr[:c][keep]
    return newU, newV, Sr[:c]


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

    @torch.no_grad()
    def grow(self, count: int) -> int:
        """Move the top ``count`` singular directions of the trainable part into the frozen part (next task).

        The previously preserved triplets stay as they are (frozen buffers); the new ones are the top singular
        triplets of ``U_l diag(S_l) V_l`` (orthogonal to the old ones on both sides), and the trainable factors
        are re-created for the remaining directions. The layer's weight is unchanged. Returns the number of
        directions added. The trainable ``nn.Parameter`` objects are new: build a new optimizer afterwards.

        Example:
            >>> layer = OSFTLinear(torch.nn.Linear(6, 6), k=2)
            >>> layer.grow(2), layer.k
            (2, 4)
        """
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"count must be a non-negative int, got {count!r}")
        dt = self.U_low.dtype
        low = (self.U_low.to(self.svd_dtype) * self.S_low.to(self.svd_dtype)) @ self.V_low.to(self.svd_dtype)
        c = min(count, self.S_low.numel())
        if c == 0:
            return 0
        U, S, Vh = torch.linalg.svd(low, full_matrices=False)
        r = self.S_low.numel()
        self.U_high = torch.cat([self.U_high, U[:, :c].to(dt)], 1).contiguous()
        self.S_high = torch.cat([self.S_high, S[:c].to(dt)]).contiguous()
        self.V_high = torch.cat([self.V_high, Vh[:c].to(dt)], 0).contiguous()
        for h in self._hooks:
            h.remove()
        self.U_low = nn.Parameter(U[:, c:r].to(dt).contiguous())
        self.S_low = nn.Parameter(S[c:r].to(dt).contiguous())
        self.V_low = nn.Parameter(Vh[c:r].to(dt).contiguous())
        self._hooks = [
            self.U_low.register_hook(self._project_dU),
            self.V_low.register_hook(self._project_dV),
        ]
        self.k += c
        self.project_()
        return c

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


class OSFTOptimizer(WrappedOptimizer):
    """Wraps an optimiser so that every step is followed by the exact re-projection of all OSFT modules.

    Args:
        optimizer: the inner optimizer over the model's (OSFT) parameters.
        modules: the :class:`OSFTLinear` modules (``apply_osft``'s result, a dict or an iterable).
        check_finite: refuse (``ValueError``, nothing modified) a step with NaN/inf gradients.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> mods = apply_osft(model)
        >>> opt = OSFTOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-4), mods)
        >>> model(torch.randn(2, 4)).sum().backward(); opt.step()
        >>> mods["0"].orthogonality_error() < 1e-6
        True
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        modules: dict[str, OSFTLinear] | Iterable[OSFTLinear],
        *,
        check_finite: bool = True,
    ) -> None:
        super().__init__(optimizer, check_finite=check_finite)
        self.modules = list(modules.values()) if isinstance(modules, dict) else list(modules)
        if not self.modules or not all(isinstance(m, OSFTLinear) for m in self.modules):
            raise TypeError(
                "modules must be a non-empty collection of OSFTLinear instances (from apply_osft)"
            )

    def _apply_step(self) -> None:
        self.optimizer.step()
        for m in self.modules:
            m.project_()

    def projection_state_dict(self) -> dict[str, Any]:
        """Preserved rank per module (informational; the bases live in the modules' buffers)."""
        return {"preserved": [int(m.k) for m in self.modules]}

    def load_projection_state_dict(self, state: dict[str, Any]) -> None:
        """Check that the modules match the saved preserved ranks."""
        ks = state.get("preserved")
        if ks is not None and list(ks) != [int(m.k) for m in self.modules]:
            raise ValueError(
                f"OSFT state was saved with preserved ranks {list(ks)}, these modules have "
                f"{[int(m.k) for m in self.modules]}"
            )


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

    ``after_task()`` stores, for every protected weight, preserved singular pairs ``(U_h, V_h)`` (data are not
    needed, batches are ignored) and ``wrap(optimizer)`` projects every applied update two-sided,
    ``ΔW ← (I − U_hU_hᵀ) ΔW (I − V_hV_hᵀ)``, so ``W V_h = U_h diag(S_h)`` and ``U_hᵀ W = diag(S_h) V_hᵀ`` stay
    exact — the same invariant as :class:`OSFTLinear` (which trains the factored complement instead).

    The first ``after_task`` preserves the top ``k`` directions (``preserve_ratio`` of ``min(m, n)``, or
    ``rank``). Every later one **grows** the preserved set (``across_tasks="grow"``, default): the old directions
    stay and the top ``grow`` singular directions of the residual ``(I − U_hU_hᵀ) W (I − V_hV_hᵀ)`` are added
    (:func:`grow_preserved`). ``across_tasks="recompute"`` restores orthokit's earlier rule (a fresh top-``k``
    of the current weight, which can drop earlier tasks' directions).

    Args:
        model: the network.
        layers: protected layers (as for :class:`SubspaceMemory`).
        preserve_ratio: fraction of ``min(m, n)`` preserved per weight on the first task (released code: 0.5).
        rank: absolute preserved rank on the first task instead (PEFT ``effective_rank``).
        grow: directions added per later task: an int (PEFT's docs: ``r += 4``), a float in ``(0, 1]`` (that
            fraction of the still-free directions, rounded down) or ``None`` (default: ``preserve_ratio`` of the
            free directions, or ``rank`` more when ``rank`` is given).
        across_tasks: ``"grow"`` (default) or ``"recompute"``.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(16, 16))
        >>> osft = OSFTProjection(model, preserve_ratio=0.5)
        >>> osft.after_task(), osft.after_task()       # 8 preserved, then 4 of the 8 free directions added
        ({'0': 8}, {'0': 4})
        >>> opt = osft.wrap(torch.optim.AdamW(model.parameters(), lr=1e-5))
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        preserve_ratio: float | None = 0.5,
        rank: int | None = None,
        grow: int | float | None = None,
        across_tasks: str = "grow",
    ) -> None:
        from orthokit.projection.memory import SubspaceMemory

        if rank is not None:
            preserve_ratio = None
            if not isinstance(rank, int) or rank < 0:
                raise ValueError(f"rank must be a non-negative int, got {rank!r}")
        if preserve_ratio is None and rank is None:
            raise ValueError("give preserve_ratio or rank")
        if preserve_ratio is not None and not 0.0 < preserve_ratio <= 1.0:
            raise ValueError(f"preserve_ratio must be in (0, 1], got {preserve_ratio}")
        if grow is not None and not (
            (isinstance(grow, int) and not isinstance(grow, bool) and grow >= 0)
            or (isinstance(grow, float) and 0.0 < grow <= 1.0)
        ):
            raise ValueError(f"grow must be a non-negative int, a float in (0, 1] or None, got {grow!r}")
        if across_tasks not in ("grow", "recompute"):
            raise ValueError(f"across_tasks must be 'grow' or 'recompute', got {across_tasks!r}")
        self.model = model
        self.memory = SubspaceMemory(model, layers, bias="augment")
        self.preserve_ratio, self.rank = preserve_ratio, rank
        self.grow, self.across_tasks = grow, across_tasks

    def _first_k(self, d: int) -> int:
        if self.rank is not None:
            return min(self.rank, d)
        assert self.preserve_ratio is not None
        return int(math.floor(self.preserve_ratio * d))

    def _grow_k(self, free: int) -> int:
        g = self.grow
        if isinstance(g, int):
            return min(g, free)
        if isinstance(g, float):
            return int(math.floor(g * free))
        if self.rank is not None:
            return min(self.rank, free)
        assert self.preserve_ratio is not None
        return int(math.floor(self.preserve_ratio * free))

    @torch.no_grad()
    def after_task(self, batches: Iterable[Any] = (), **kwargs: Any) -> dict[str, int]:
        """Preserve (first task) or grow (later tasks) each weight's singular directions; returns directions added."""
        if kwargs:
            raise TypeError(f"OSFTProjection.after_task got unexpected keyword arguments {sorted(kwargs)}")
        if self.across_tasks == "recompute":
            return self.memory.collect_weights(rank=self.rank, rank_ratio=self.preserve_ratio)
        added: dict[str, int] = {}
        for name in self.memory.layer_names:
            lay = self.memory.layer(name)
            w = lay.module.weight.detach()
            mat = w.T if lay.layout == "hf_conv1d" else w.reshape(w.shape[0], -1)
            d = min(mat.shape)
            has = lay.kind == "weight" and lay.k > 0
            U = lay.u if has else None
            V = lay.basis if has else None
            k_old = int(V.shape[1]) if V is not None else 0
            count = self._grow_k(d - k_old) if has else self._first_k(d)
            newU, newV, _ = grow_preserved(mat, U, V, count)
            added[name] = int(newV.shape[1]) - k_old
            if newV.shape[1] > 0:
                self.memory.set_basis(name, newV, kind="weight", u=newU, orthonormalize=False)
        self.memory.task_count += 1
        return added

    def state_dict(self) -> dict[str, Any]:
        """The memory (preserved bases per layer)."""
        return {"memory": self.memory.state_dict()}

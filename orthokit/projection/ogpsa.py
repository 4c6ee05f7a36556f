"""OGPSA — Orthogonal Gradient Projection for Safety Alignment (Sun et al., arXiv 2602.07892).

OGPSA treats alignment fine-tuning as continual learning: a *reference* ("general capability") loss
``L_ref`` must not change to first order while a new objective is optimised. For every trainable
tensor ``θ_p`` it keeps a low-rank orthonormal basis ``U_p ∈ R^{numel(θ_p) × r}`` spanned by the
gradients of ``L_ref`` on ``r`` reference sets, and replaces each new-task gradient by

.. math::

    g_p \\leftarrow g_p - U_p U_p^\\top g_p  \\qquad (\\text{rule } ``orthogonal''),

so that ``⟨∇_{θ_p} L_ref^{(i)}, g_p⟩ = 0`` for every reference direction ``i`` (per tensor, hence also
globally). The released code uses one reference dataset (rank 1) or two (rank 2: Gram–Schmidt of the two
normalised summed gradients). Here the reference batches are split into ``rank`` **contiguous** groups, one per
reference dataset (batches ``[A, A, B, B]`` with ``rank=2`` give the directions of ``A`` and of ``B``). The bases
are recomputed every ``refresh_every`` optimiser steps (30 for SFT, 5 for DPO); the ``threshold`` rule removes
the component only when it conflicts (cos < 0). Projecting the gradient before an adaptive optimiser (AdamW)
does not keep the *applied* update orthogonal (the elementwise preconditioner rotates it back, note §1.4);
``where="update"`` projects the parameter delta produced by the wrapped optimiser instead, exact for any
optimiser. The default ``where="gradient"`` is the released code's behaviour (``param.register_hook``).

Reference: G. Sun, …, "Safety Alignment as Continual Learning: Mitigating the Alignment Tax via Orthogonal
Gradient Projection", arXiv:2602.07892 (2026); code github.com/SunGL001/OGPSA
(``src/llamafactory/train/sft_pg/trainer.py``, commit cddc63f).

Example:
    >>> import torch
    >>> model = torch.nn.Linear(8, 4)
    >>> ref = [(torch.randn(16, 8), torch.randn(16, 4))]
    >>> opt = OGPSA(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn=mse_loss, reference_batches=ref)
    >>> mse_loss(model, (torch.randn(4, 8), torch.randn(4, 4))).backward(); opt.step(); opt.zero_grad()
    >>> sorted(opt.bases) == ["bias", "weight"]
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from orthokit.projection._wrapper import WrappedOptimizer, check_where_mode
from orthokit.projection.projected import Projected
from orthokit.projection.registry import ProjectionMethod, register_projection

__all__ = [
    "OGPSA",
    "OGPSAProjection",
    "OGPSAProjected",
    "reference_gradient_bases",
    "reference_groups",
    "project_out",
    "mse_loss",
    "OGPSA_RULES",
]

OGPSA_RULES = ("orthogonal", "threshold")


def mse_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """``mse_loss(model(x), y)`` for an ``(x, y)`` batch — a picklable reference loss for regression examples."""
    return torch.nn.functional.mse_loss(model(batch[0]), batch[1])


def reference_groups(n_batches: int, rank: int) -> list[list[int]]:
    """Split batch indices ``0..n_batches-1`` into ``rank`` contiguous, nearly equal groups (one per dataset).

    The first ``n_batches % rank`` groups get one extra batch (``numpy.array_split`` order).

    Example:
        >>> reference_groups(4, 2)
        [[0, 1], [2, 3]]
        >>> reference_groups(5, 2)
        [[0, 1, 2], [3, 4]]
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if n_batches < rank:
        raise ValueError(f"need at least rank={rank} reference batches, got {n_batches}")
    size, extra = divmod(n_batches, rank)
    out, start = [], 0
    for i in range(rank):
        stop = start + size + (1 if i < extra else 0)
        out.append(list(range(start, stop)))
        start = stop
    return out


def _orthonormal_columns(vectors: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis ``[d, k]`` of the columns of ``vectors`` ``[d, r]`` by Gram–Schmidt applied twice.

    Columns whose residual is ≤ ``rtol`` × their norm (or exactly zero) are dropped, so ``k ≤ r``.
    """
    basis: list[torch.Tensor] = []
    for j in range(vectors.shape[1]):
        v = vectors[:, j].clone()
        norm0 = float(v.norm())
        if norm0 == 0.0 or not torch.isfinite(v).all():
            continue
        for _ in range(2):  # "twice is enough" (Giraud et al.) — keeps orthogonality at machine precision
            for b in basis:
                v = v - (b @ v) * b
        n = float(v.norm())
        if n > rtol * norm0:
            basis.append(v / n)
    if not basis:
        return vectors.new_zeros(vectors.shape[0], 0)
    return torch.stack(basis, dim=1)


def project_out(
    grad: torch.Tensor, basis: torch.Tensor, rule: str = "orthogonal", scale: float = 1.0
) -> torch.Tensor:
    """Remove from ``grad`` its component in ``span(basis)``.

    ``grad`` is any tensor; ``basis`` is ``[grad.numel(), k]`` with orthonormal columns.

    * ``"orthogonal"``: ``g − U Uᵀ g`` (OGPSA's ``orthogonal_projection``).
    * ``"threshold"``: remove only the *conflicting* components ``⟨g,u_i⟩u_i`` with ``⟨g,u_i⟩ < 0``; when no
      component conflicts, return ``scale · g`` (OGPSA's ``threshold`` method with ``base_scale``; for rank 1
      this is exactly "project if cos < 0, else scale").

    Args:
        grad: gradient of one tensor.
        basis: orthonormal columns (e.g. from :func:`reference_gradient_bases`).
        rule: one of :data:`OGPSA_RULES`.
        scale: factor applied to non-conflicting components in ``"threshold"`` rule.

    Example:
        >>> u = torch.tensor([[1.0], [0.0]])
        >>> project_out(torch.tensor([3.0, 4.0]), u)
        tensor([0., 4.])
    """
    if rule not in OGPSA_RULES:
        raise ValueError(f"unknown OGPSA rule {rule!r}; valid: {', '.join(OGPSA_RULES)}")
    if basis.dim() != 2 or basis.shape[0] != grad.numel():
        raise ValueError(f"basis must be [grad.numel()={grad.numel()}, k], got shape {tuple(basis.shape)}")
    if basis.shape[1] == 0:
        return grad.clone()
    g = grad.reshape(-1)
    b = basis.to(dtype=torch.promote_types(g.dtype, basis.dtype), device=g.device)
    coef = b.T @ g.to(b.dtype)
    if rule == "orthogonal":
        out = g.to(b.dtype) - b @ coef
    else:
        neg = coef < 0
        if bool(neg.any()):
            out = g.to(b.dtype) - b @ torch.where(neg, coef, torch.zeros_like(coef))
        else:
            out = scale * g.to(b.dtype)
    return out.to(grad.dtype).reshape(grad.shape)


def _check_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise ValueError("loss_fn must return a scalar tensor")
    return loss


def reference_gradient_bases(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    reference_batches: Sequence[Any],
    rank: int = 1,
    params: Sequence[tuple[str, nn.Parameter]] | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Per-tensor orthonormal bases of the reference-loss gradients.

    The reference batches are split into ``rank`` contiguous groups (:func:`reference_groups`), one per reference
    dataset; the summed gradient of each group is one direction (OGPSA's ``base_num_samples`` summed SFT gradient
    is ``rank=1``; two reference datasets, ``[A…, B…]``, is ``rank=2``). For each parameter the ``rank``
    directions are normalised and orthonormalised in order (Gram–Schmidt twice, zero/degenerate directions
    dropped), giving ``U_p`` of shape ``[numel, k ≤ rank]``.

    Args:
        model: the network (its ``.grad`` fields are left as they were).
        loss_fn: ``loss_fn(model, batch) -> scalar`` reference (general-capability) loss.
        reference_batches: at least ``rank`` batches, grouped contiguously by dataset.
        rank: number of reference directions per tensor.
        params: ``(name, parameter)`` pairs to cover (default: all trainable parameters).
        dtype: storage dtype of the bases (default: the parameter's dtype promoted to at least float32).

    Returns:
        ``{name: U_p}``.

    Example:
        >>> m = torch.nn.Linear(2, 1, bias=False)
        >>> b = [(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 1))]
        >>> reference_gradient_bases(m, mse_loss, b)["weight"].abs().T
        tensor([[1., 0.]])
    """
    groups = reference_groups(len(reference_batches), rank)
    named = (
        list(params)
        if params is not None
        else [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    )
    if not named:
        raise ValueError("no trainable parameters to build reference gradients for")
    tensors = [p for _, p in named]
    cols: list[list[torch.Tensor]] = [[] for _ in named]
    for grp in groups:
        acc = [
            torch.zeros(
                p.numel(), dtype=dtype or torch.promote_types(p.dtype, torch.float32), device=p.device
            )
            for p in tensors
        ]
        for i in grp:
            loss = _check_loss(loss_fn(model, reference_batches[i]))
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for a, g in zip(acc, grads):
                if g is not None:
                    a += g.detach().reshape(-1).to(a.dtype)
        for c, a in zip(cols, acc):
            c.append(a)
    return {name: _orthonormal_columns(torch.stack(c, dim=1)) for (name, _), c in zip(named, cols)}


class OGPSA(WrappedOptimizer):
    """Optimiser wrapper: updates orthogonal (per tensor) to a periodically refreshed reference-gradient subspace.

    ``step()`` (1) refreshes the reference bases every ``refresh_every`` steps (and on the first step),
    (2) projects each trainable gradient with :func:`project_out` (``where="gradient"``, OGPSA's behaviour) or
    lets the inner optimiser step and projects the resulting parameter delta ``Δθ_p ← Δθ_p − U_p U_pᵀ Δθ_p``
    (``where="update"``, exact for adaptive optimisers), then (3) steps the wrapped optimiser.

    Args:
        optimizer: any ``torch.optim.Optimizer`` over (a subset of) ``model``'s parameters.
        model: the network (reference gradients are taken w.r.t. the optimiser's parameters).
        loss_fn: ``loss_fn(model, batch) -> scalar`` reference loss.
        reference_batches: reference (general-capability) data; ``rank`` contiguous groups of it (one per
            dataset) define the subspace. Kept in memory for refreshes, never put in ``state_dict``.
        rank: reference directions per tensor (1 in the paper's default configuration, 2 with two datasets).
        refresh_every: recompute the bases every this many steps (paper: 30 SFT, 5 DPO); ``0`` = never.
        rule: ``"orthogonal"`` or ``"threshold"`` (see :func:`project_out`).
        where: ``"gradient"`` (released code) or ``"update"`` (exact for any optimiser).
        scale: ``base_scale`` of the threshold rule.
        check_finite: refuse (``ValueError``, nothing modified) a step with NaN/inf gradients.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> ref = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(4)]   # datasets A, A, B, B
        >>> opt = OGPSA(torch.optim.AdamW(model.parameters(), lr=1e-3), model, loss_fn=mse_loss,
        ...             reference_batches=ref, rank=2, where="update")
        >>> mse_loss(model, ref[0]).backward(); opt.step()
        >>> opt.bases["weight"].shape
        torch.Size([6, 2])
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        *,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        reference_batches: Sequence[Any],
        rank: int = 1,
        refresh_every: int = 30,
        rule: str = "orthogonal",
        where: str = "gradient",
        scale: float = 1.0,
        check_finite: bool = True,
    ) -> None:
        super().__init__(optimizer, check_finite=check_finite)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError("loss_fn must be callable: loss_fn(model, batch) -> scalar tensor")
        if rule not in OGPSA_RULES:
            raise ValueError(f"unknown OGPSA rule {rule!r}; valid: {', '.join(OGPSA_RULES)}")
        check_where_mode(where=where)
        if where == "update" and rule != "orthogonal":
            raise ValueError(
                "where='update' supports only rule='orthogonal' (threshold is gradient-dependent)"
            )
        if not isinstance(refresh_every, int) or refresh_every < 0:
            raise ValueError(f"refresh_every must be a non-negative int, got {refresh_every!r}")
        reference_groups(len(reference_batches), rank)  # validates rank and the batch count
        self.model = model
        self.loss_fn = loss_fn
        self.reference_batches = list(reference_batches)
        self.rank = rank
        self.refresh_every = refresh_every
        self.rule = rule
        self.where = where
        self.scale = float(scale)
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self._named = [(n, p) for n, p in model.named_parameters() if id(p) in ids and p.requires_grad]
        if not self._named:
            raise ValueError("the optimizer holds none of model's trainable parameters")
        self.bases: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.refreshes = 0

    def _named_params(self) -> dict[int, str]:
        return {id(p): n for n, p in self._named}

    def refresh(self) -> None:
        """Recompute the reference bases now (the current ``.grad`` fields are preserved)."""
        with torch.enable_grad():
            self.bases = reference_gradient_bases(
                self.model, self.loss_fn, self.reference_batches, rank=self.rank, params=self._named
            )
        self.refreshes += 1

    def memory_floats(self) -> int:
        """Number of floats held by the bases (≈ rank × |θ|)."""
        return sum(b.numel() for b in self.bases.values())

    def _apply_step(self) -> None:
        if not self.bases or (self.refresh_every and self.steps % self.refresh_every == 0):
            self.refresh()
        if self.where == "gradient":
            for name, p in self._named:
                if p.grad is not None:
                    p.grad.copy_(project_out(p.grad, self.bases[name], self.rule, self.scale))
            self.optimizer.step()
        else:
            before = {name: p.detach().clone() for name, p in self._named}
            self.optimizer.step()
            for name, p in self._named:
                delta = p - before[name]
                p.copy_(before[name] + project_out(delta, self.bases[name]))
        self.steps += 1

    def projection_state_dict(self) -> dict[str, Any]:
        """Bases, counters and settings (no reference data)."""
        return {
            "bases": {n: b.clone() for n, b in self.bases.items()},
            "steps": self.steps,
            "refreshes": self.refreshes,
            "rank": self.rank,
            "rule": self.rule,
            "where": self.where,
        }

    def load_projection_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`projection_state_dict` output (validated first: names and shapes)."""
        bases = state.get("bases")
        if not isinstance(bases, dict) or "steps" not in state:
            raise ValueError("OGPSA projection state needs 'bases' (dict) and 'steps'")
        sizes = {n: p.numel() for n, p in self._named}
        for n, b in bases.items():
            if n not in sizes:
                raise ValueError(f"OGPSA state has a basis for unknown parameter {n!r}")
            if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[0] != sizes[n]:
                raise ValueError(f"OGPSA basis for {n!r} must be [{sizes[n]}, k]")
        self.bases = {n: b.clone() for n, b in bases.items()}
        self.steps = int(state["steps"])
        self.refreshes = int(state.get("refreshes", self.refreshes))


def _layer_reference_bases(
    memory: Any,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Sequence[Any],
    rank: int,
) -> dict[str, torch.Tensor]:
    """Per protected layer (weight and bias flattened together) orthonormal bases of ``rank`` reference gradients
    (contiguous groups of ``batches``, one per reference dataset)."""
    names = memory.layer_names
    params = [p for n in names for p in memory.layer(n).params]
    cols: list[torch.Tensor] = []
    for grp in reference_groups(len(batches), rank):
        acc = None
        for i in grp:
            loss = _check_loss(loss_fn(model, batches[i]))
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            flat = torch.cat(
                [(torch.zeros_like(p) if g is None else g).reshape(-1).double() for g, p in zip(gs, params)]
            )
            acc = flat if acc is None else acc + flat
        assert acc is not None
        cols.append(acc)
    G = torch.stack(cols, dim=1)
    out, off = {}, 0
    for n in names:
        d = sum(p.numel() for p in memory.layer(n).params)
        out[n] = _orthonormal_columns(G[off : off + d])
        off += d
    return out


def _default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise TypeError("OGPSA's default loss needs (x, y) batches; pass loss_fn for other formats")
    out = model(batch[0])
    if isinstance(out, (tuple, list)):
        out = out[0]
    return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), batch[1].reshape(-1))


class OGPSAProjected(Projected):
    """:class:`~orthokit.projection.projected.Projected` that asks its :class:`OGPSAProjection` to refresh the
    reference bases before each step when due (module-level, so it pickles with its method)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        method: OGPSAProjection,
        *,
        where: str = "update",
        check_finite: bool = True,
    ) -> None:
        if not isinstance(method, OGPSAProjection):
            raise TypeError(f"method must be an OGPSAProjection, got {type(method).__name__}")
        super().__init__(optimizer, method.memory, mode="hard", where=where, check_finite=check_finite)
        self.method = method

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Refresh the bases when due, then the projected step."""
        self.method.on_step()
        return super().step(closure)


@register_projection(
    "ogpsa",
    subspace="gradient",
    optimizer_agnostic=True,
    guarantee="first_order",
    paper="Sun et al., Safety Alignment as Continual Learning: Mitigating the Alignment Tax via Orthogonal "
    "Gradient Projection, arXiv 2602.07892 (2026)",
)
class OGPSAProjection(ProjectionMethod):
    """OGPSA as a registered projection method (per-layer reference-gradient subspace, periodic refresh).

    ``after_task(reference_batches)`` keeps the reference (general-capability) data and builds, for every
    protected layer, the orthonormal basis of ``rank`` reference-loss gradients (weight and bias flattened;
    the batches split into ``rank`` contiguous groups, one per reference dataset); ``wrap(optimizer)`` returns
    an :class:`OGPSAProjected` optimizer that projects the applied update off these bases and recomputes them
    every ``refresh_every`` steps (the paper's periodic refresh) — so the reference loss is unchanged to first
    order at every step, for any inner optimizer. :class:`OGPSA` is the standalone per-tensor optimizer wrapper
    covering every trainable tensor. The reference data are not part of :meth:`state_dict`; after loading a
    state, call :meth:`set_reference` before refreshes can run.

    Args:
        model: the network.
        layers: protected layers (as for :class:`SubspaceMemory`).
        rank: reference directions per layer (reference datasets).
        refresh_every: refresh period in optimiser steps (0 = never; paper: 30 SFT, 5 DPO).
        loss_fn: ``loss_fn(model, batch)`` reference loss (default: cross-entropy of ``model(x)`` vs ``y``).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> ref = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(2)]
        >>> ogpsa = OGPSAProjection(model, rank=2, refresh_every=30)
        >>> ogpsa.after_task(ref)
        {'0': 2}
        >>> opt = ogpsa.wrap(torch.optim.AdamW(model.parameters(), lr=1e-5))
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        rank: int = 1,
        refresh_every: int = 30,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        if not isinstance(refresh_every, int) or refresh_every < 0:
            raise ValueError(f"refresh_every must be a non-negative int, got {refresh_every!r}")
        from orthokit.projection.memory import SubspaceMemory

        self.model = model
        self.memory = SubspaceMemory(model, layers, bias="augment")
        self.rank, self.refresh_every = rank, refresh_every
        self.loss_fn = loss_fn or _default_loss
        self.reference: list[Any] = []
        self.steps = 0
        self.refreshes = 0

    def set_reference(self, batches: Iterable[Any]) -> None:
        """Keep ``batches`` as the reference set (no basis is recomputed)."""
        batches = list(batches)
        reference_groups(len(batches), self.rank)
        self.reference = batches

    def refresh(self) -> dict[str, int]:
        """Recompute every layer's basis from the stored reference batches at the current parameters."""
        reference_groups(len(self.reference), self.rank)
        with torch.enable_grad():
            bases = _layer_reference_bases(self.memory, self.model, self.loss_fn, self.reference, self.rank)
        for n, B in bases.items():
            self.memory.set_basis(n, B if B.shape[1] else None, kind="gradient", orthonormalize=False)
        self.refreshes += 1
        return {n: int(B.shape[1]) for n, B in bases.items()}

    def after_task(self, batches: Iterable[Any], **kwargs: Any) -> dict[str, int]:
        """Keep ``batches`` as the reference set and build the bases. Returns directions per layer."""
        if kwargs:
            raise TypeError(f"OGPSAProjection.after_task got unexpected keyword arguments {sorted(kwargs)}")
        self.set_reference(batches)
        added = self.refresh()
        self.memory.task_count += 1
        return added

    def on_step(self) -> None:
        """Called by the wrapped optimizer before each step: refresh when due."""
        if self.refresh_every and self.reference and self.steps > 0 and self.steps % self.refresh_every == 0:
            self.refresh()
        self.steps += 1

    def wrap(self, optimizer: torch.optim.Optimizer, *, where: str = "update") -> torch.optim.Optimizer:
        """An :class:`OGPSAProjected` optimizer that refreshes the bases every ``refresh_every`` steps."""
        return OGPSAProjected(optimizer, self, where=where)

    def state_dict(self) -> dict[str, Any]:
        """Memory and the step counter (the reference data are not saved)."""
        return {"memory": self.memory.state_dict(), "steps": self.steps, "refreshes": self.refreshes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        super().load_state_dict(state)
        self.steps = int(state.get("steps", 0))
        self.refreshes = int(state.get("refreshes", 0))

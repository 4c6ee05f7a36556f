"""OGPSA — Orthogonal Gradient Projection for Safety Alignment (Sun et al., arXiv 2602.07892).

OGPSA treats alignment fine-tuning as continual learning: a *reference* ("general capability") loss
``L_ref`` must not change to first order while a new objective is optimised. For every trainable
tensor ``θ_p`` it keeps a low-rank orthonormal basis ``U_p ∈ R^{numel(θ_p) × r}`` spanned by the
gradients of ``L_ref`` on ``r`` groups of reference batches, and replaces each new-task gradient by

.. math::

    g_p \\leftarrow g_p - U_p U_p^\\top g_p  \\qquad (\\text{mode } ``orthogonal''),

so that ``⟨∇_{θ_p} L_ref^{(i)}, g_p⟩ = 0`` for every reference direction ``i`` (per tensor, hence also
globally). The released code uses rank 1 per tensor (one reference set; rank 2 with two sets,
Gram–Schmidt of the two normalised gradients) and recomputes the reference gradients every
``base_num_steps`` optimiser steps (30 for SFT, 5 for DPO); it also has a ``threshold`` mode that removes
the component only when it conflicts (cos < 0). Both are implemented here. Projecting the gradient before
an adaptive optimiser (AdamW) does not keep the *applied* update orthogonal (the elementwise
preconditioner rotates it back, note §1.4); ``project="update"`` therefore projects the parameter
delta produced by the wrapped optimiser instead, which is exact for any optimiser.

Reference: G. Sun, …, "Safety Alignment as Continual Learning: Mitigating the Alignment Tax via Orthogonal
Gradient Projection", arXiv:2602.07892 (2026); code github.com/SunGL001/OGPSA (``sft_pg/trainer.py``).

Example:
    >>> model = torch.nn.Linear(8, 4)
    >>> ref = [(torch.randn(16, 8), torch.randn(16, 4))]
    >>> loss_fn = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])
    >>> opt = OGPSA(torch.optim.SGD(model.parameters(), lr=0.1), model, loss_fn, ref, refresh_every=30)
    >>> loss_fn(model, (torch.randn(4, 8), torch.randn(4, 4))).backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from orthokit.projection.registry import ProjectionMethod, register_projection

__all__ = ["OGPSA", "OGPSAProjection", "reference_gradient_bases", "project_out", "OGPSA_MODES"]

OGPSA_MODES = ("orthogonal", "threshold")


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
    grad: torch.Tensor, basis: torch.Tensor, mode: str = "orthogonal", scale: float = 1.0
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
        mode: one of :data:`OGPSA_MODES`.
        scale: factor applied to non-conflicting components in ``"threshold"`` mode.

    Example:
        >>> u = torch.tensor([[1.0], [0.0]])
        >>> project_out(torch.tensor([3.0, 4.0]), u)
        tensor([0., 4.])
    """
    if mode not in OGPSA_MODES:
        raise ValueError(f"unknown OGPSA mode {mode!r}; valid: {', '.join(OGPSA_MODES)}")
    if basis.dim() != 2 or basis.shape[0] != grad.numel():
        raise ValueError(f"basis must be [grad.numel()={grad.numel()}, k], got shape {tuple(basis.shape)}")
    if basis.shape[1] == 0:
        return grad.clone()
    g = grad.reshape(-1)
    b = basis.to(dtype=torch.promote_types(g.dtype, basis.dtype), device=g.device)
    coef = b.T @ g.to(b.dtype)
    if mode == "orthogonal":
        out = g.to(b.dtype) - b @ coef
    else:
        neg = coef < 0
        if bool(neg.any()):
            out = g.to(b.dtype) - b @ torch.where(neg, coef, torch.zeros_like(coef))
        else:
            out = scale * g.to(b.dtype)
    return out.to(grad.dtype).reshape(grad.shape)


def reference_gradient_bases(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    reference_batches: Sequence[Any],
    rank: int = 1,
    params: Sequence[tuple[str, nn.Parameter]] | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Per-tensor orthonormal bases of the reference-loss gradients.

    The reference batches are split into ``rank`` contiguous groups; the summed gradient of each group is
    one direction (OGPSA's ``base_num_samples`` summed SFT gradient is ``rank=1``; two reference datasets is
    ``rank=2``). For each parameter the ``rank`` directions are normalised and orthonormalised (Gram–Schmidt
    twice, zero/degenerate directions dropped), giving ``U_p`` of shape ``[numel, k ≤ rank]``.

    Args:
        model: the network (its ``.grad`` fields are left as they were).
        loss_fn: ``loss_fn(model, batch) -> scalar`` reference (general-capability) loss.
        reference_batches: at least ``rank`` batches.
        rank: number of reference directions per tensor.
        params: ``(name, parameter)`` pairs to cover (default: all trainable parameters).
        dtype: storage dtype of the bases (default: the parameter's dtype promoted to at least float32).

    Returns:
        ``{name: U_p}``.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    if len(reference_batches) < rank:
        raise ValueError(f"need at least rank={rank} reference batches, got {len(reference_batches)}")
    named = (
        list(params)
        if params is not None
        else [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    )
    if not named:
        raise ValueError("no trainable parameters to build reference gradients for")
    tensors = [p for _, p in named]
    groups = [list(range(len(reference_batches)))[i::rank] for i in range(rank)]
    cols: list[list[torch.Tensor]] = [[] for _ in named]
    for grp in groups:
        acc = [
            torch.zeros(
                p.numel(), dtype=dtype or torch.promote_types(p.dtype, torch.float32), device=p.device
            )
            for p in tensors
        ]
        for i in grp:
            loss = loss_fn(model, reference_batches[i])
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise ValueError("loss_fn must return a scalar tensor")
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            for a, g in zip(acc, grads):
                if g is not None:
                    a += g.detach().reshape(-1).to(a.dtype)
        for c, a in zip(cols, acc):
            c.append(a)
    return {name: _orthonormal_columns(torch.stack(c, dim=1)) for (name, _), c in zip(named, cols)}


class OGPSA:
    """Optimiser wrapper: updates orthogonal (per tensor) to a periodically refreshed reference-gradient subspace.

    ``step()`` (1) refreshes the reference bases every ``refresh_every`` steps (and on the first step),
    (2) projects each trainable gradient with :func:`project_out` (``project="grad"``, OGPSA's behaviour) or
    lets the base optimiser step and projects the resulting parameter delta ``Δθ_p ← Δθ_p − U_p U_pᵀ Δθ_p``
    (``project="update"``, exact for adaptive optimisers), then (3) steps the wrapped optimiser.

    Args:
        optimizer: any ``torch.optim.Optimizer`` over (a subset of) ``model``'s parameters.
        model: the network (reference gradients are taken w.r.t. the optimiser's parameters).
        loss_fn: ``loss_fn(model, batch) -> scalar`` reference loss.
        reference_batches: reference (general-capability) data; ``rank`` groups of it define the subspace.
        rank: reference directions per tensor (1 in the paper's default configuration).
        refresh_every: recompute the bases every this many steps (paper: 30 SFT, 5 DPO); ``0`` = never.
        mode: ``"orthogonal"`` or ``"threshold"`` (see :func:`project_out`).
        project: ``"grad"`` or ``"update"``.
        scale: ``base_scale`` of the threshold mode.

    Example:
        >>> opt = OGPSA(torch.optim.AdamW(model.parameters(), lr=1e-3), model, loss_fn, ref_batches,
        ...             project="update")
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        loss_fn: Callable[[nn.Module, Any], torch.Tensor],
        reference_batches: Sequence[Any],
        rank: int = 1,
        refresh_every: int = 30,
        mode: str = "orthogonal",
        project: str = "grad",
        scale: float = 1.0,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if mode not in OGPSA_MODES:
            raise ValueError(f"unknown OGPSA mode {mode!r}; valid: {', '.join(OGPSA_MODES)}")
        if project not in ("grad", "update"):
            raise ValueError(f"project must be 'grad' or 'update', got {project!r}")
        if project == "update" and mode != "orthogonal":
            raise ValueError(
                "project='update' supports only mode='orthogonal' (threshold is gradient-dependent)"
            )
        if not isinstance(refresh_every, int) or refresh_every < 0:
            raise ValueError(f"refresh_every must be a non-negative int, got {refresh_every!r}")
        if len(reference_batches) < rank:
            raise ValueError(f"need at least rank={rank} reference batches, got {len(reference_batches)}")
        self.optimizer = optimizer
        self.model = model
        self.loss_fn = loss_fn
        self.reference_batches = list(reference_batches)
        self.rank = rank
        self.refresh_every = refresh_every
        self.mode = mode
        self.project = project
        self.scale = scale
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self._named = [(n, p) for n, p in model.named_parameters() if id(p) in ids and p.requires_grad]
        if not self._named:
            raise ValueError("the optimizer holds none of model's trainable parameters")
        self.bases: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.refreshes = 0

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimiser's parameter groups (so LR schedulers work)."""
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the wrapped optimiser's gradients."""
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def refresh(self) -> None:
        """Recompute the reference bases now (the current ``.grad`` fields are preserved)."""
        self.bases = reference_gradient_bases(
            self.model, self.loss_fn, self.reference_batches, rank=self.rank, params=self._named
        )
        self.refreshes += 1

    def memory_floats(self) -> int:
        """Number of floats held by the bases (≈ rank × |θ|)."""
        return sum(b.numel() for b in self.bases.values())

    @torch.no_grad()
    def _project_grads(self) -> None:
        for name, p in self._named:
            if p.grad is not None:
                p.grad.copy_(project_out(p.grad, self.bases[name], self.mode, self.scale))

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Refresh if due, project, and step the wrapped optimiser."""
        if not self.bases or (self.refresh_every and self.steps % self.refresh_every == 0):
            with torch.enable_grad():
                self.refresh()
        loss = None
        if self.project == "grad":
            self._project_grads()
            loss = self.optimizer.step(closure)
        else:
            before = {name: p.detach().clone() for name, p in self._named}
            loss = self.optimizer.step(closure)
            with torch.no_grad():
                for name, p in self._named:
                    delta = p - before[name]
                    p.copy_(before[name] + project_out(delta, self.bases[name]))
        self.steps += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        """Wrapped optimiser state plus bases and step counter."""
        return {"optimizer": self.optimizer.state_dict(), "bases": dict(self.bases), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.bases = dict(state["bases"])
        self.steps = int(state["steps"])


def _layer_reference_bases(
    memory: Any,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Sequence[Any],
    rank: int,
) -> dict[str, torch.Tensor]:
    """Per protected layer (weight and bias flattened together) orthonormal bases of ``rank`` reference gradients."""
    names = memory.layer_names
    params = [p for n in names for p in memory.layer(n).params]
    groups = [list(range(len(batches)))[i::rank] for i in range(rank)]
    cols: list[torch.Tensor] = []
    for grp in groups:
        acc = None
        for i in grp:
            loss = loss_fn(model, batches[i])
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise ValueError("loss_fn must return a scalar tensor")
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

    ``after_task(reference_batches)`` stores the reference (general-capability) data and builds, for every
    protected layer, the orthonormal basis of ``rank`` reference-loss gradients (weight and bias flattened);
    ``wrap(optimizer)`` returns a :class:`~orthokit.projection.projected.Projected` optimizer that projects the
    applied update off these bases and recomputes them every ``refresh_every`` steps (the paper's periodic
    refresh) — so the reference loss is unchanged to first order at every step, for any inner optimizer.
    :class:`OGPSA` is the standalone per-tensor optimizer wrapper covering every trainable tensor.

    Args:
        model: the network.
        layers: protected layers (as for :class:`SubspaceMemory`).
        rank: reference directions per layer.
        refresh_every: refresh period in optimiser steps (0 = never; paper: 30 SFT, 5 DPO).
        loss_fn: ``loss_fn(model, batch)`` reference loss (default: cross-entropy of ``model(x)`` vs ``y``).

    Example:
        >>> ogpsa = OGPSAProjection(model, rank=2, refresh_every=30)
        >>> ogpsa.after_task(general_capability_batches)
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

    def refresh(self) -> dict[str, int]:
        """Recompute every layer's basis from the stored reference batches at the current parameters."""
        if len(self.reference) < self.rank:
            raise ValueError(f"need at least rank={self.rank} reference batches, got {len(self.reference)}")
        with torch.enable_grad():
            bases = _layer_reference_bases(self.memory, self.model, self.loss_fn, self.reference, self.rank)
        for n, B in bases.items():
            self.memory.set_basis(n, B if B.shape[1] else None, kind="gradient", orthonormalize=False)
        self.refreshes += 1
        return {n: int(B.shape[1]) for n, B in bases.items()}

    def after_task(self, batches: Iterable[Any], **kwargs: Any) -> dict[str, int]:
        """Store ``batches`` as the reference set and build the bases. Returns directions per layer."""
        self.reference = list(batches)
        added = self.refresh()
        self.memory.task_count += 1
        return added

    def on_step(self) -> None:
        """Called by the wrapped optimizer before each step: refresh when due."""
        if self.refresh_every and self.reference and self.steps > 0 and self.steps % self.refresh_every == 0:
            self.refresh()
        self.steps += 1

    def wrap(self, optimizer: torch.optim.Optimizer, *, where: str = "update") -> torch.optim.Optimizer:
        """A :class:`Projected` optimizer that refreshes the reference bases every ``refresh_every`` steps."""
        from orthokit.projection.projected import Projected

        method = self

        class _Refreshing(Projected):
            def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
                method.on_step()
                return super().step(closure)

        return _Refreshing(optimizer, self.memory, mode="hard", where=where)

    def state_dict(self) -> dict[str, Any]:
        """Memory, reference batches and the step counter."""
        return {"memory": self.memory.state_dict(), "reference": list(self.reference), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        super().load_state_dict(state)
        self.reference = list(state.get("reference", []))
        self.steps = int(state.get("steps", 0))

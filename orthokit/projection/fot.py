"""FOT — Federated Orthogonal Training (Bakman, Yaldiz, Ezzeldin, Avestimehr; ICLR 2024).

Continual *federated* learning: clients train locally with plain SGD; the **server** removes from the
aggregated update every component that would change old tasks' layer outputs. For a layer ``W`` (out, in)
with orthonormal global activation basis ``M ∈ R^{n×k}`` of old tasks:

.. math::

    ΔW = \\sum_c \\frac{n_c}{\\sum n} (W_c - W_{global}),\\qquad
    ΔW \\leftarrow ΔW - ΔW M M^\\top,\\qquad W_{global} \\leftarrow W_{global} + ΔW ,

so ``W_new x = W_old x`` for every ``x ∈ span(M)``. At the end of a task each client sends the Gram matrix
``C_c = R_c R_cᵀ`` of its layer inputs (its *sum* is all the server needs; no raw activations leave the
client). The server forms ``C = Σ_c C_c``, the residual ``Ĉ = P⊥ C P⊥`` (``P⊥ = I − MMᵀ``), the residual
energy ratio ``r = tr(Ĉ)/tr(C)`` and the relative threshold ``ε' = (r − (1 − ε))/r`` (FOT's aggregator
formula), keeps the smallest ``k`` eigenvectors of ``Ĉ`` with ``Σ_{i≤k} λ_i / tr(Ĉ) ≥ ε'`` — algebraically
GPM's incremental energy criterion on the pooled activations — concatenates them to ``M`` and
re-orthonormalises with QR; ``ε`` then grows by ``eps_inc``.

Reference: Y. F. Bakman, D. N. Yaldiz, Y. H. Ezzeldin, S. Avestimehr, "Federated Orthogonal Training:
Mitigating Global Catastrophic Forgetting in Continual Federated Learning", ICLR 2024 (arXiv 2309.01289);
code github.com/duygunuryldz/Federated_Orthogonal_Training (``FedAVGAggregator.py``).

Example:
    >>> fot = FOT(global_model, layers=["layers.0", "layers.1"], threshold=0.95)
    >>> fot.aggregate([client_a.state_dict(), client_b.state_dict()], weights=[600, 400])
    >>> fot.end_task([FOT.client_statistics(client_a, fot, batches_a), FOT.client_statistics(client_b, fot, batches_b)])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from orthokit.projection.memory import SubspaceMemory
from orthokit.projection.registry import ProjectionMethod, register_projection

__all__ = ["fot_project_update", "fot_expand_basis", "FOT"]


def fot_project_update(delta: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Server-side projection ``ΔW − (ΔW_flat M) Mᵀ`` of one layer update (conv weights flattened to (out, −1)).

    Args:
        delta: aggregated update ``[out, ...]``.
        basis: ``[n, k]`` orthonormal columns, ``n = delta[0].numel()``.

    Example:
        >>> fot_project_update(torch.ones(2, 2), torch.tensor([[1.0], [0.0]]))
        tensor([[0., 1.],
                [0., 1.]])
    """
    flat = delta.reshape(delta.shape[0], -1)
    if basis.dim() != 2 or basis.shape[0] != flat.shape[1]:
        raise ValueError(f"basis must be [{flat.shape[1]}, k], got {tuple(basis.shape)}")
    if basis.shape[1] == 0:
        return delta.clone()
    B = basis.to(torch.promote_types(flat.dtype, basis.dtype))
    out = flat.to(B.dtype) - (flat.to(B.dtype) @ B) @ B.T
    return out.to(delta.dtype).reshape(delta.shape)


def fot_expand_basis(
    basis: torch.Tensor, gram: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Grow an orthonormal basis from a pooled activation Gram matrix ``C = Σ_c R_c R_cᵀ``.

    Args:
        basis: ``[n, k0]`` current orthonormal basis (``k0`` may be 0).
        gram: ``[n, n]`` symmetric PSD pooled Gram matrix.
        threshold: energy threshold ``ε ∈ (0, 1]``.

    Returns:
        ``(new_basis, info)`` with ``info = {"residual_ratio": r, "relative_threshold": ε', "added": k}``.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    n = gram.shape[0]
    if gram.shape != (n, n) or basis.dim() != 2 or basis.shape[0] != n:
        raise ValueError(
            f"gram must be [n, n] and basis [n, k]; got {tuple(gram.shape)}, {tuple(basis.shape)}"
        )
    if not torch.isfinite(gram).all():
        raise ValueError("gram contains non-finite values")
    C = gram.double()
    C = 0.5 * (C + C.T)
    M = basis.double()
    total = float(torch.trace(C))
    if total <= 0.0:
        return basis.clone(), {"residual_ratio": 0.0, "relative_threshold": 1.0, "added": 0.0}
    P = torch.eye(n, dtype=torch.float64) - M @ M.T
    Ch = P @ C @ P
    resid = float(torch.trace(Ch))
    r = resid / total
    if r <= 1.0 - threshold or r <= 1e-12 or M.shape[1] >= n:
        return basis.clone(), {"residual_ratio": r, "relative_threshold": 0.0, "added": 0.0}
    eps_rel = (r - (1.0 - threshold)) / r
    evals, evecs = torch.linalg.eigh(0.5 * (Ch + Ch.T))
    evals, evecs = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    frac = evals.cumsum(0) / evals.sum()
    k = int(torch.searchsorted(frac, torch.tensor(eps_rel - 1e-12, dtype=frac.dtype)).item()) + 1
    k = min(k, n - M.shape[1])
    new = torch.cat([M, evecs[:, :k]], 1)
    Q = torch.linalg.qr(new).Q
    return Q.to(basis.dtype), {"residual_ratio": r, "relative_threshold": eps_rel, "added": float(k)}


@register_projection(
    "fot",
    aliases=("federated_orthogonal_training",),
    subspace="activation",
    optimizer_agnostic=True,
    guarantee="exact",
    paper="Bakman, Yaldiz, Ezzeldin & Avestimehr, Federated Orthogonal Training: Mitigating Global "
    "Catastrophic Forgetting in Continual Federated Learning, ICLR 2024 (arXiv 2309.01289)",
)
class FOT(ProjectionMethod):
    """FOT server: pooled client activation statistics → global bases; projected FedAvg aggregation.

    * :meth:`client_statistics` (run on a client): ``{layer: Σ x xᵀ}`` of its layer inputs (bias-augmented rows,
      like GPM) — the only thing a client sends at task end.
    * :meth:`end_task` (server): pool the clients' matrices and grow each layer's basis with
      :func:`fot_expand_basis`, then ``ε += eps_inc``. :meth:`after_task` is the single-site shortcut (the
      batches play the role of one client's data), so FOT also works as a centralised projection method.
    * :meth:`aggregate` (server): FedAvg of the client states with every protected layer's update projected,
      ``ΔW ← ΔW (I − MMᵀ)`` (applied to ``[W | b]``), other tensors averaged plainly.

    Args:
        model: the global model.
        layers: protected layers (as for :class:`SubspaceMemory`).
        threshold: initial ``ε``.
        eps_inc: increment of ``ε`` after each task (capped at 1).
        bias: bias policy of the memory (``"augment"`` default).

    Example:
        >>> fot = FOT(global_model, threshold=0.95)
        >>> stats = [FOT.client_statistics(global_model, fot_layers, c_batches) for c_batches in clients]
        >>> fot.end_task(stats)
        >>> fot.aggregate([c.state_dict() for c in client_models], weights=[600, 400])
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        threshold: float = 0.95,
        eps_inc: float = 0.0,
        bias: str = "augment",
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.model = model
        self.memory = SubspaceMemory(model, layers, bias=bias)
        self.threshold = float(threshold)
        self.eps_inc = float(eps_inc)

    @staticmethod
    def client_statistics(
        model: nn.Module, memory_or_method: Any, batches: Iterable[Any]
    ) -> dict[str, torch.Tensor]:
        """What a client sends: float64 ``{layer: Σ x xᵀ}`` over its ``batches`` (no raw activations)."""
        mem = memory_or_method.memory if hasattr(memory_or_method, "memory") else memory_or_method
        covs, _ = mem.activation_covariances(model, batches, reduce=False)
        return covs

    def end_task(self, client_grams: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, int]:
        """Pool the clients' Gram matrices, grow each layer's basis, raise ``ε``; returns directions added."""
        if not client_grams:
            raise ValueError("need at least one client's activation statistics")
        added: dict[str, int] = {}
        self.info: dict[str, dict[str, float]] = {}
        for name in self.memory.layer_names:
            C = sum(g[name].double() for g in client_grams)
            lay = self.memory.layer(name)
            old = self.memory.basis(name)
            M = torch.zeros(lay.dim, 0, dtype=torch.float64) if old is None else old.double()
            new, info = fot_expand_basis(M, C, self.threshold)
            self.info[name] = info
            added[name] = int(info["added"])
            if new.shape[1] > 0 and added[name] > 0:
                self.memory.set_basis(name, new, kind="activation")
        self.memory.task_count += 1
        self.threshold = min(1.0, self.threshold + self.eps_inc)
        return added

    def after_task(self, batches: Iterable[Any], **kwargs: Any) -> dict[str, int]:
        """Centralised shortcut: ``end_task([client_statistics(model, self, batches)])``."""
        return self.end_task([self.client_statistics(self.model, self, batches)])

    @torch.no_grad()
    def aggregate(
        self, client_states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
    ) -> dict[str, float]:
        """FedAvg ``client_states`` into the global model with protected updates projected.

        Returns ``{layer: ‖removed part‖_F / ‖ΔW‖_F}`` (the interference FOT took out of the update).
        """
        if not client_states:
            raise ValueError("need at least one client state")
        w = torch.tensor(
            [1.0] * len(client_states) if weights is None else list(weights), dtype=torch.float64
        )
        if w.numel() != len(client_states) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("weights must be non-negative, one per client, with a positive sum")
        w = w / w.sum()
        names = dict(self.model.named_parameters())
        state = self.model.state_dict()
        deltas: dict[str, torch.Tensor] = {}
        new_state = {}
        for key, cur in state.items():
            if not cur.is_floating_point():
                new_state[key] = client_states[0][key]
                continue
            avg = sum(float(wi) * cs[key].double() for wi, cs in zip(w, client_states))
            deltas[key] = (avg - cur.double()).to(cur.dtype)
        upd = {names[k]: d.clone() for k, d in deltas.items() if k in names}
        raw = {p: d.clone() for p, d in upd.items()}
        self.memory.project_(upd, mode="hard")
        removed: dict[str, float] = {}
        for lname in self.memory.layer_names:
            ps = self.memory.layer(lname).params
            num = sum(float((raw[p] - upd[p]).double().norm() ** 2) for p in ps if p in raw)
            den = sum(float(raw[p].double().norm() ** 2) for p in ps if p in raw)
            removed[lname] = (num / den) ** 0.5 if den > 0 else 0.0
        by_param = {id(p): d for p, d in upd.items()}
        for key, cur in state.items():
            if key not in deltas:
                continue
            d = by_param.get(id(names[key]), deltas[key]) if key in names else deltas[key]
            new_state[key] = cur + d.to(cur.dtype)
        self.model.load_state_dict(new_state)
        return removed

    def dims(self) -> dict[str, int]:
        """Basis size per protected layer."""
        return {s.name: int(s.k) for s in self.memory.summary()}

    def state_dict(self) -> dict[str, Any]:
        """Memory plus the current threshold."""
        return {"memory": self.memory.state_dict(), "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        super().load_state_dict(state)
        self.threshold = float(state.get("threshold", self.threshold))

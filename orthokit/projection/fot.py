"""FOT — Federated Orthogonal Training (Bakman, Yaldiz, Ezzeldin, Avestimehr; ICLR 2024).

Continual *federated* learning: clients train locally with plain SGD; the **server** removes from the
aggregated update every component that would change old tasks' layer outputs. For a layer ``W`` (out, in)
with orthonormal global activation basis ``M ∈ R^{n×k}`` of old tasks:

.. math::

    ΔW = \\sum_c \\frac{n_c}{\\sum n} (W_c - W_{global}),\\qquad
    ΔW \\leftarrow ΔW - ΔW M M^\\top,\\qquad W_{global} \\leftarrow W_{global} + ΔW ,

so ``W_new x = W_old x`` for every ``x ∈ span(M)``. At the end of a task each client ``c`` with layer inputs
``R_c ∈ R^{n×N_c}`` forms the residual ``R̂_c = R_c − MMᵀR_c`` and sends (FOT's client code):

* a random sketch ``Y_c = R̂_c Ω_c`` with ``Ω_c ∈ R^{N_c×n}`` i.i.d. uniform on ``[−1, 1]`` — FOT's privacy
  mechanism: the raw activations never leave the client (``sketch="uniform"``, default; ``"gaussian"`` draws
  ``N(0, 1)`` entries; ``None`` sends the exact Gram matrix ``R_c R_cᵀ`` instead, orthokit's earlier protocol);
* its norm ratio ``ρ_c = ‖R̂_c‖_F / ‖R_c‖_F`` (1 when ``M`` is empty) and its sample count ``N_c``.

The server sums the sketches, ``A = Σ_c Y_c``, takes the sample-weighted mean ratio ``ρ̄ = Σ_c N_c ρ_c / Σ N``,
the relative threshold ``ε' = (ρ̄ − (1 − ε))/ρ̄``, the SVD ``A = U S Vᵀ`` and keeps the smallest ``k`` with
``Σ_{i≤k} s_i² / ‖A‖_F² > ε'`` (strict, at least one direction), appends ``U[:, :k]`` to ``M`` and
re-orthonormalises with QR; ``ε`` then grows by ``eps_inc``. ``ratio_rule="energy"`` restores orthokit's
earlier pooled energy ratio ``r = Σ‖R̂_c‖² / Σ‖R_c‖²`` with the minimal ``≥`` criterion (GPM's incremental rule
on the pooled data; at ``ρ = 0.5``, ``ε = 0.95`` it gives ``ε' = 0.80`` where FOT's rule gives ``0.90``).

Reference: Y. F. Bakman, D. N. Yaldiz, Y. H. Ezzeldin, S. Avestimehr, "Federated Orthogonal Training:
Mitigating Global Catastrophic Forgetting in Continual Federated Learning", ICLR 2024 (arXiv 2309.01289);
code github.com/duygunuryldz/Federated_Orthogonal_Training (commit 6adce7c: ``FedAVGAggregator.py``
``expand_orth_set``/``aggregate``, ``trainer/mnist_trainer.py`` ``collect_activations``).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> fot = FOT(net, threshold=0.95)
    >>> a, b = [torch.randn(20, 6)], [torch.randn(30, 6)]                # two clients' task data
    >>> added = fot.end_task([FOT.client_statistics(net, fot, a, seed=1), FOT.client_statistics(net, fot, b, seed=2)])
    >>> clients = [copy.deepcopy(net) for _ in range(2)]                  # ... local training happens here
    >>> removed = fot.aggregate([c.state_dict() for c in clients], weights=[20, 30])
"""

from __future__ import annotations

import copy  # noqa: F401  (used by the module example)
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from orthokit.projection.memory import SubspaceMemory, default_forward
from orthokit.projection.registry import ProjectionMethod, register_projection

__all__ = [
    "fot_project_update",
    "fot_expand_basis",
    "fot_client_layer_statistics",
    "FOT",
    "FOT_SKETCHES",
    "FOT_RATIO_RULES",
]

FOT_SKETCHES = ("uniform", "gaussian", None)
FOT_RATIO_RULES = ("fot", "energy")


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


def _check_sketch(sketch: Any) -> None:
    if sketch not in FOT_SKETCHES:
        raise ValueError(f"sketch must be 'uniform', 'gaussian' or None, got {sketch!r}")


def fot_client_layer_statistics(
    rows: torch.Tensor,
    basis: torch.Tensor | None,
    *,
    sketch: str | None = "uniform",
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """What one client sends for one layer at task end (FOT's ``collect_activations``), in float64.

    Args:
        rows: the client's layer inputs ``[N, n]`` (one row per sample / position).
        basis: the current global basis ``M`` ``[n, k]`` (``None``/empty on the first task).
        sketch: ``"uniform"`` — ``Y = R̂ Ω`` with ``Ω = 2·torch.rand(N, n, generator=generator) − 1`` (FOT);
            ``"gaussian"`` — ``Ω = torch.randn(N, n, generator=generator)``; ``None`` — the exact residual Gram
            ``R̂ R̂ᵀ`` (no privacy mechanism).
        generator: RNG of the sketch (float64 draws).

    Returns:
        ``{"sketch" | "gram": [n, n] tensor, "ratio": ‖R̂‖/‖R‖, "energy": ‖R‖², "resid_energy": ‖R̂‖²,
        "samples": N}`` — tensors and numbers only, never the activations.

    Example:
        >>> st = fot_client_layer_statistics(torch.eye(3), torch.eye(3)[:, :1], sketch=None)
        >>> round(st["ratio"] ** 2, 6), st["gram"].diagonal()
        (0.666667, tensor([0., 1., 1.], dtype=torch.float64))
    """
    _check_sketch(sketch)
    if rows.dim() != 2:
        raise ValueError(f"rows must be [N, n], got shape {tuple(rows.shape)}")
    if not bool(torch.isfinite(rows).all()):
        raise ValueError("rows contain non-finite values")
    R = rows.detach().to(torch.float64).T  # [n, N], FOT's layout
    n, N = R.shape
    energy = float((R * R).sum())
    if basis is not None and basis.shape[1] > 0:
        if basis.shape[0] != n:
            raise ValueError(f"basis must be [{n}, k], got {tuple(basis.shape)}")
        M = basis.detach().to(torch.float64)
        Rh = R - M @ (M.T @ R)
        resid = float((Rh * Rh).sum())
        ratio = (resid**0.5) / (energy**0.5) if energy > 0 else 0.0
    else:
        Rh, resid, ratio = R, energy, 1.0
    out: dict[str, Any] = {"ratio": ratio, "energy": energy, "resid_energy": resid, "samples": N}
    if sketch is None:
        out["gram"] = Rh @ Rh.T
    else:
        if sketch == "uniform":
            omega = torch.rand(N, n, generator=generator, dtype=torch.float64) * 2 - 1
        else:
            omega = torch.randn(N, n, generator=generator, dtype=torch.float64)
        out["sketch"] = Rh @ omega
    return out


def _as_client_stats(stat: Any, M: torch.Tensor) -> dict[str, Any]:
    """Accept a client's layer statistics dict, or a plain (legacy) Gram matrix ``Σ x xᵀ`` of raw inputs."""
    if isinstance(stat, torch.Tensor):
        C = stat.detach().to(torch.float64)
        C = 0.5 * (C + C.T)
        n = C.shape[0]
        if C.shape != (n, n) or M.shape[0] != n:
            raise ValueError(
                f"gram must be [n, n] matching the basis [n, k]; got {tuple(C.shape)}, {tuple(M.shape)}"
            )
        if not bool(torch.isfinite(C).all()):
            raise ValueError("gram contains non-finite values")
        P = torch.eye(n, dtype=torch.float64) - M @ M.T
        Ch = P @ C @ P
        energy, resid = float(torch.trace(C)), float(torch.trace(Ch))
        ratio = (max(resid, 0.0) / energy) ** 0.5 if energy > 0 else 0.0
        if M.shape[1] == 0:
            ratio = 1.0
        return {"gram": Ch, "ratio": ratio, "energy": energy, "resid_energy": resid, "samples": 1}
    if not isinstance(stat, Mapping) or not ({"sketch", "gram"} & set(stat)):
        raise ValueError(
            "client statistics must be a dict with 'sketch' or 'gram' (from FOT.client_statistics)"
        )
    return dict(stat)


def fot_expand_basis(
    basis: torch.Tensor,
    client_stats: torch.Tensor | Sequence[Any],
    threshold: float,
    *,
    ratio_rule: str = "fot",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Grow an orthonormal basis from the clients' statistics of one layer (FOT's ``expand_orth_set``).

    Args:
        basis: ``[n, k0]`` current orthonormal basis (``k0`` may be 0).
        client_stats: one entry per client from :func:`fot_client_layer_statistics` (sketches and exact Grams
            may not be mixed), or a single pooled Gram matrix ``C = Σ x xᵀ`` of raw inputs (one "client").
        threshold: energy threshold ``ε ∈ (0, 1]``.
        ratio_rule: ``"fot"`` — ``ρ̄`` = sample-weighted mean of the clients' norm ratios and the strict ``>``
            criterion (FOT's code); ``"energy"`` — pooled energy ratio and the minimal ``≥`` criterion.

    Returns:
        ``(new_basis, info)`` with ``info = {"residual_ratio": ρ̄, "relative_threshold": ε', "added": k}``.

    Example:
        >>> st = fot_client_layer_statistics(torch.diag(torch.tensor([3.0, 1.0, 0.1])), None, sketch=None)
        >>> B, info = fot_expand_basis(torch.zeros(3, 0), [st], 0.95)
        >>> B.shape[1], info["relative_threshold"]
        (2, 0.95)
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if ratio_rule not in FOT_RATIO_RULES:
        raise ValueError(f"ratio_rule must be 'fot' or 'energy', got {ratio_rule!r}")
    if basis.dim() != 2:
        raise ValueError(f"basis must be [n, k], got {tuple(basis.shape)}")
    M = basis.detach().to(torch.float64)
    n = M.shape[0]
    stats = (
        [_as_client_stats(client_stats, M)]
        if isinstance(client_stats, torch.Tensor)
        else [_as_client_stats(s, M) for s in client_stats]
    )
    if not stats:
        raise ValueError("need at least one client's statistics")
    kinds = {"sketch" if "sketch" in s else "gram" for s in stats}
    if len(kinds) != 1:
        raise ValueError("client statistics mix sketches and exact Gram matrices")
    kind = kinds.pop()
    mats = [s[kind].detach().to(torch.float64) for s in stats]
    for A in mats:
        if A.shape != (n, n):
            raise ValueError(f"client {kind} must be [{n}, {n}], got {tuple(A.shape)}")
        if not bool(torch.isfinite(A).all()):
            raise ValueError(f"client {kind} contains non-finite values")
    none = {"residual_ratio": 0.0, "relative_threshold": 1.0, "added": 0.0}
    if ratio_rule == "fot":
        w = torch.tensor([float(s["samples"]) for s in stats], dtype=torch.float64)
        if bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError("client sample counts must be non-negative with a positive sum")
        rho = float(
            (w / w.sum() * torch.tensor([float(s["ratio"]) for s in stats], dtype=torch.float64)).sum()
        )
    else:
        tot = sum(float(s["energy"]) for s in stats)
        rho = sum(float(s["resid_energy"]) for s in stats) / tot if tot > 0 else 0.0
    none["residual_ratio"] = rho
    if rho <= 1e-12 or M.shape[1] >= n:
        return basis.clone(), none
    eps_rel = (rho - (1.0 - threshold)) / rho
    if kind == "sketch":
        U, S, _ = torch.linalg.svd(sum(mats), full_matrices=False)
        energies = S * S
    else:
        C = sum(mats)
        evals, evecs = torch.linalg.eigh(0.5 * (C + C.T))
        energies, U = evals.flip(0).clamp_min(0.0), evecs.flip(1)
    total = float(energies.sum())
    if total <= 0.0:
        return basis.clone(), {**none, "relative_threshold": eps_rel}
    frac = energies.cumsum(0) / total
    if ratio_rule == "fot":
        if rho <= 0:
            return basis.clone(), none
        above = (frac > eps_rel).nonzero()
        k = int(above[0]) + 1 if above.numel() else frac.numel()
    else:
        if rho <= 1.0 - threshold:
            return basis.clone(), {**none, "relative_threshold": 0.0}
        k = int(torch.searchsorted(frac, torch.tensor(eps_rel - 1e-12, dtype=frac.dtype)).item()) + 1
    k = min(k, n - M.shape[1], U.shape[1])
    Q = torch.linalg.qr(torch.cat([M, U[:, :k]], 1)).Q
    return Q.to(basis.dtype), {"residual_ratio": rho, "relative_threshold": eps_rel, "added": float(k)}


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
    """FOT server: clients' sketched residual activations → global bases; projected FedAvg aggregation.

    * :meth:`client_statistics` (run on a client): per protected layer, the sketch ``R̂_cΩ_c`` of its residual
      layer inputs, its norm ratio and sample count (:func:`fot_client_layer_statistics`) — the only thing a
      client sends at task end.
    * :meth:`end_task` (server): grow each layer's basis with :func:`fot_expand_basis`, then ``ε += eps_inc``.
      :meth:`after_task` is the single-site shortcut (the batches play the role of one client's data), so FOT
      also works as a centralised projection method.
    * :meth:`aggregate` (server): FedAvg of the client states with every protected layer's update projected,
      ``ΔW ← ΔW (I − MMᵀ)`` (applied to ``[W | b]`` with ``bias="augment"``), other tensors averaged plainly.

    Args:
        model: the global model.
        layers: protected layers (as for :class:`SubspaceMemory`).
        threshold: initial ``ε``.
        eps_inc: increment of ``ε`` after each task (capped at 1).
        bias: ``"augment"`` (orthokit default: inputs extended by a constant 1, biases projected with the weight
            so old outputs are exactly unchanged) or ``"ignore"`` (FOT's code: raw inputs, biases averaged freely).
        sketch: the clients' sketch (``"uniform"`` as FOT, ``"gaussian"``, or ``None`` for exact Grams).
        ratio_rule: ``"fot"`` (default) or ``"energy"`` (see :func:`fot_expand_basis`).
        seed: base seed of the sketches drawn by :meth:`client_statistics` / :meth:`after_task`.
        max_samples: at most this many samples per client and task (``None``: all).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(5, 3))
        >>> fot = FOT(net, threshold=0.9, sketch=None, ratio_rule="energy")   # orthokit's earlier protocol
        >>> sorted(fot.after_task([torch.randn(8, 5)]))
        ['0']
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        threshold: float = 0.95,
        eps_inc: float = 0.0,
        bias: str = "augment",
        sketch: str | None = "uniform",
        ratio_rule: str = "fot",
        seed: int = 0,
        max_samples: int | None = None,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        _check_sketch(sketch)
        if ratio_rule not in FOT_RATIO_RULES:
            raise ValueError(f"ratio_rule must be 'fot' or 'energy', got {ratio_rule!r}")
        if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
            raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
        self.model = model
        self.memory = SubspaceMemory(model, layers, bias=bias)
        self.threshold = float(threshold)
        self.eps_inc = float(eps_inc)
        self.sketch, self.ratio_rule = sketch, ratio_rule
        self.seed, self.max_samples = int(seed), max_samples
        self._calls = 0

    @staticmethod
    @torch.no_grad()
    def client_statistics(
        model: nn.Module,
        memory_or_method: Any,
        batches: Iterable[Any],
        *,
        sketch: str | None | bool = True,
        seed: int | None = None,
        max_samples: int | None = None,
    ) -> dict[str, dict[str, Any]]:
        """What a client sends at task end: ``{layer: fot_client_layer_statistics(...)}`` (no raw activations).

        Args:
            model: the client's model (its protected layers are hooked by name).
            memory_or_method: the server's :class:`FOT` (or its :class:`SubspaceMemory`) — the current bases.
            batches: the client's task data.
            sketch: ``True`` (default) — the method's setting (``"uniform"`` for a bare memory); or explicit.
            seed: sketch seed; ``None`` — derived from the method's ``seed`` and a per-call counter (each client
                call gets a different sketch), or torch's global RNG for a bare memory.
            max_samples: at most this many samples (default: the method's ``max_samples``).
        """
        method = memory_or_method if isinstance(memory_or_method, FOT) else None
        mem = memory_or_method.memory if hasattr(memory_or_method, "memory") else memory_or_method
        if not isinstance(mem, SubspaceMemory):
            raise TypeError("memory_or_method must be a FOT or a SubspaceMemory")
        if sketch is True:
            sketch = method.sketch if method is not None else "uniform"
        _check_sketch(sketch)
        if max_samples is None and method is not None:
            max_samples = method.max_samples
        gen = None
        if seed is None and method is not None:
            seed = method.seed * 1_000_003 + mem.task_count * 1009 + method._calls
            method._calls += 1
        if seed is not None:
            gen = torch.Generator().manual_seed(int(seed))
        rows: dict[str, list[torch.Tensor]] = {n: [] for n in mem.layer_names}
        handles = []
        for name in mem.layer_names:
            lay = mem.layer(name)
            target = dict(model.named_modules()).get(name)
            if target is None:
                raise ValueError(f"client model has no module {name!r}")

            def hook(_m: nn.Module, args: tuple[Any, ...], lay: Any = lay, name: str = name) -> None:
                rows[name].append(lay.rows(args[0].detach()).to(torch.float64))

            handles.append(target.register_forward_pre_hook(hook))
        was = model.training
        model.eval()
        seen = 0
        try:
            for b in batches:
                if max_samples is not None and seen >= max_samples:
                    break
                x = b[0] if isinstance(b, (tuple, list)) else b
                if max_samples is not None and seen + len(x) > max_samples:
                    keep = max_samples - seen
                    b = (x[:keep], *b[1:]) if isinstance(b, (tuple, list)) else x[:keep]
                    x = x[:keep]
                default_forward(model, b)
                seen += len(x)
        finally:
            for h in handles:
                h.remove()
            model.train(was)
        out = {}
        for name in mem.layer_names:
            lay = mem.layer(name)
            R = torch.cat(rows[name]) if rows[name] else torch.zeros(0, lay.dim, dtype=torch.float64)
            out[name] = fot_client_layer_statistics(R, mem.basis(name), sketch=sketch, generator=gen)  # type: ignore[arg-type]
        return out

    def end_task(self, client_stats: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """Grow each layer's basis from the clients' statistics, raise ``ε``; returns directions added."""
        if not client_stats:
            raise ValueError("need at least one client's activation statistics")
        for i, st in enumerate(client_stats):
            missing = [n for n in self.memory.layer_names if n not in st]
            if missing:
                raise ValueError(f"client {i} sent no statistics for layers {missing}")
        added: dict[str, int] = {}
        self.info: dict[str, dict[str, float]] = {}
        new_bases = {}
        for name in self.memory.layer_names:
            lay = self.memory.layer(name)
            old = self.memory.basis(name)
            M = torch.zeros(lay.dim, 0, dtype=torch.float64) if old is None else old.double()
            new, info = fot_expand_basis(
                M, [st[name] for st in client_stats], self.threshold, ratio_rule=self.ratio_rule
            )
            self.info[name] = info
            added[name] = int(info["added"])
            new_bases[name] = new
        for name, new in new_bases.items():  # validated everything first: apply
            if added[name] > 0:
                self.memory.set_basis(name, new, kind="activation")
        self.memory.task_count += 1
        self.threshold = min(1.0, self.threshold + self.eps_inc)
        return added

    def after_task(self, batches: Iterable[Any], **kwargs: Any) -> dict[str, int]:
        """Centralised shortcut: ``end_task([client_statistics(model, self, batches)])``."""
        if kwargs:
            raise TypeError(f"FOT.after_task got unexpected keyword arguments {sorted(kwargs)}")
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
        """Memory plus the current threshold and sketch counter."""
        return {"memory": self.memory.state_dict(), "threshold": self.threshold, "calls": self._calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        super().load_state_dict(state)
        self.threshold = float(state.get("threshold", self.threshold))
        self._calls = int(state.get("calls", self._calls))

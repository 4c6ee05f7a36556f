"""Task-vector diagnostics: how much do fine-tunes interfere before they are merged?

Data-free (state dicts only):

* :func:`task_vectors` — ``τ_t = θ_t − θ_0`` per tensor.
* :func:`pairwise_cosine` — cosine of the flattened whole-model task vectors (Ilharco et al., ICLR 2023; FusionBench's
  ``TaskVectorCosSimilarity``); near 0 ⇒ little interference in weight space.
* :func:`subspace_overlap` — per 2-D tensor, principal angles between the top-k left (output) or right (input)
  singular subspaces of two task vectors; overlap = mean cos²θ = ‖U_iᵀU_j‖²_F / k ∈ [0, 1] (k/n for random
  subspaces), aggregated over tensors weighted by size.
* :func:`sign_conflict_rate` — fraction of entries, among those kept (top-``density`` by magnitude) by at least two
  tasks, on which the kept values disagree in sign (TIES-Merging's motivation, Yadav et al. 2023).
* :func:`singular_task_interference` — TSV's STI ``‖(ÛᵀÛ − I) Σ̂ (V̂ᵀV̂ − I)‖₁`` with Û, V̂ the **column-wise**
  concatenations of the tasks' top-r singular vectors (Gargiulo et al., CVPR 2025; FusionBench's version
  concatenates along the wrong dimension and crashes for T > 1).

On data (needs a model):

* :func:`weight_disentanglement_error` — Ortiz-Jiménez et al. (NeurIPS 2023, arXiv 2305.12827), Eq. 4:
  ``ξ(α) = Σ_t E_{x∈D_t}[ dist(f(x; θ_0 + α_t τ_t), f(x; θ_0 + Σ_j α_j τ_j)) ]``; 0 means task arithmetic
  is perfectly disentangled: adding the other tasks does not change the model's behaviour on task t.
  :func:`disentanglement_grid` evaluates it on an (α_i, α_j) grid for two tasks (the paper's heat maps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from orthokit.linalg import principal_angles

__all__ = [
    "task_vectors",
    "pairwise_cosine",
    "subspace_overlap",
    "SubspaceOverlap",
    "sign_conflict_rate",
    "singular_task_interference",
    "weight_disentanglement_error",
    "disentanglement_grid",
]

StateDict = Mapping[str, Tensor]


def _check_state_dicts(sds: Sequence[StateDict], what: str) -> list[str]:
    if isinstance(sds, Mapping) or not isinstance(sds, Sequence) or len(sds) == 0:
        raise ValueError(f"{what} must be a non-empty sequence of state dicts")
    keys = list(sds[0].keys())
    for i, sd in enumerate(sds):
        if not isinstance(sd, Mapping):
            raise TypeError(f"{what}[{i}] must be a mapping name -> tensor, got {type(sd).__name__}")
        if set(sd.keys()) != set(keys):
            diff = sorted(set(sd.keys()) ^ set(keys))[:5]
            raise ValueError(f"{what}[{i}] has different keys from {what}[0] (e.g. {diff})")
        for k in keys:
            if not isinstance(sd[k], Tensor):
                raise TypeError(f"{what}[{i}][{k!r}] must be a torch.Tensor, got {type(sd[k]).__name__}")
            if sd[k].shape != sds[0][k].shape:
                raise ValueError(
                    f"shape mismatch for {k!r}: {what}[{i}] has {tuple(sd[k].shape)}, "
                    f"{what}[0] has {tuple(sds[0][k].shape)}"
                )
    return keys


def task_vectors(base: StateDict, finetuned: Sequence[StateDict]) -> list[dict[str, Tensor]]:
    """Task vectors ``τ_t = θ_t − θ_0`` for every floating tensor (float32 or wider; non-float entries skipped).

    Example:
        >>> tv = task_vectors({"w": torch.zeros(2)}, [{"w": torch.ones(2)}])
        >>> tv[0]["w"].tolist()
        [1.0, 1.0]

    Reference: Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, arXiv 2212.04089.
    """
    keys = _check_state_dicts([base, *finetuned], "models")
    out = []
    for sd in finetuned:
        tv = {}
        for k in keys:
            if base[k].is_floating_point():
                cd = torch.promote_types(base[k].dtype, torch.float32)
                tv[k] = sd[k].to(cd) - base[k].to(cd)
        out.append(tv)
    return out


def _flatten(tv: StateDict | Tensor, keys: Sequence[str] | None) -> Tensor:
    if isinstance(tv, Tensor):
        return tv.reshape(-1).to(torch.float64)
    ks = keys if keys is not None else list(tv.keys())
    return torch.cat([tv[k].reshape(-1).to(torch.float64) for k in ks])


def pairwise_cosine(task_vecs: Sequence[StateDict | Tensor], keys: Sequence[str] | None = None) -> Tensor:
    """``T × T`` cosine similarity of flattened task vectors (float64; a zero vector gives 0).

    Math: ``cos(τ_i, τ_j) = ⟨τ_i, τ_j⟩ / (‖τ_i‖ ‖τ_j‖)`` over the concatenation of ``keys`` (default all).

    Example:
        >>> pairwise_cosine([torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])])[0, 1].item()  # doctest: +ELLIPSIS
        0.7071...
    """
    if len(task_vecs) == 0:
        raise ValueError("need at least one task vector")
    if not isinstance(task_vecs[0], Tensor):
        _check_state_dicts(task_vecs, "task_vecs")  # type: ignore[arg-type]
    X = torch.stack([_flatten(t, keys) for t in task_vecs])
    n = X.norm(dim=1)
    G = X @ X.T
    den = n[:, None] * n[None, :]
    return torch.where(den > 0, G / den.clamp_min(1e-300), torch.zeros_like(G))


@dataclass
class SubspaceOverlap:
    """Result of :func:`subspace_overlap`.

    Attributes:
        mean: ``T × T`` size-weighted mean over 2-D tensors of the overlap ``mean cos²θ`` (diagonal 1).
        per_tensor: name → ``T × T`` overlap matrix.
        angles: name → ``T × T × k`` principal angles (radians, ascending).
        chance: name → expected overlap of random k-dim subspaces (``k/n``), for reference.
    """

    mean: Tensor
    per_tensor: dict[str, Tensor] = field(default_factory=dict)
    angles: dict[str, Tensor] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)


def subspace_overlap(
    task_vecs: Sequence[StateDict], rank: int = 8, side: Literal["left", "right"] = "left"
) -> SubspaceOverlap:
    """Overlap of the tasks' top-``rank`` singular subspaces per 2-D tensor, from principal angles.

    Math: ``τ_t = U_t Σ_t V_tᵀ``; ``B_t = U_t[:, :k]`` (left: the output directions a task writes) or
    ``V_t[:, :k]`` (right: input directions it reads), ``k = min(rank, m, n)``; ``θ = principal_angles(B_i, B_j)``;
    overlap ``= mean_l cos²θ_l = ‖B_iᵀB_j‖²_F / k``. ``mean`` weights tensors by their number of entries.

    Args:
        task_vecs: task-vector state dicts (see :func:`task_vectors`).
        rank: subspace dimension k per task and tensor.
        side: ``"left"`` or ``"right"`` singular vectors.

    Example:
        >>> a = {"w": torch.diag(torch.tensor([1.0, 0.0, 0.0]))}
        >>> b = {"w": torch.diag(torch.tensor([0.0, 1.0, 0.0]))}
        >>> round(subspace_overlap([a, b], rank=1).mean[0, 1].item(), 12)
        0.0

    Reference: Björck & Golub, Math. Comp. 27 (1973) (principal angles); used as a merge-interference diagnostic
    by Gargiulo et al., "Task Singular Vectors", CVPR 2025, arXiv 2412.00081.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    keys = _check_state_dicts(task_vecs, "task_vecs")
    T = len(task_vecs)
    tot = torch.zeros(T, T, dtype=torch.float64)
    wsum = 0.0
    res = SubspaceOverlap(mean=tot)
    for k in keys:
        if task_vecs[0][k].dim() != 2:
            continue
        m, n = task_vecs[0][k].shape
        kk = min(rank, m, n)
        bases = []
        for tv in task_vecs:
            U, _, Vh = torch.linalg.svd(tv[k].to(torch.float64), full_matrices=False)
            bases.append(U[:, :kk] if side == "left" else Vh[:kk].T)
        ang = torch.zeros(T, T, kk, dtype=torch.float64)
        for i in range(T):
            for j in range(i + 1, T):
                a = principal_angles(bases[i], bases[j])
                ang[i, j] = ang[j, i] = a
        ov = torch.cos(ang).square().mean(-1)
        res.per_tensor[k], res.angles[k] = ov, ang
        res.chance[k] = kk / (m if side == "left" else n)
        size = float(m * n)
        tot += size * ov
        wsum += size
    if wsum == 0:
        raise ValueError("no 2-D tensors in the task vectors; subspace overlap needs matrices")
    res.mean = tot / wsum
    return res


def sign_conflict_rate(task_vecs: Sequence[StateDict | Tensor], density: float = 0.2) -> float:
    """Fraction of entries kept by ≥ 2 tasks (top-``density`` |τ| per task and tensor) whose signs disagree.

    Example:
        >>> sign_conflict_rate([torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 1.0])], density=1.0)
        0.5

    Reference: Yadav et al., "TIES-Merging", NeurIPS 2023, arXiv 2306.01708 (sign interference).
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if len(task_vecs) < 2:
        raise ValueError("sign conflicts need at least two task vectors")
    if isinstance(task_vecs[0], Tensor):
        groups = [[t.reshape(-1).to(torch.float64) for t in task_vecs]]  # type: ignore[union-attr]
    else:
        keys = _check_state_dicts(task_vecs, "task_vecs")  # type: ignore[arg-type]
        groups = [[tv[k].reshape(-1).to(torch.float64) for tv in task_vecs] for k in keys]  # type: ignore[index]
    conflicts = 0
    shared = 0
    for g in groups:
        signs = []
        for v in g:
            kk = max(1, int(math.floor(density * v.numel())))
            thr = v.abs().kthvalue(v.numel() - kk + 1).values
            signs.append(torch.where((v.abs() >= thr) & (v != 0), torch.sign(v), torch.zeros_like(v)))
        S = torch.stack(signs)
        kept = (S != 0).sum(0)
        pos, neg = (S > 0).any(0), (S < 0).any(0)
        shared += int((kept >= 2).sum())
        conflicts += int((pos & neg).sum())
    return conflicts / shared if shared else 0.0


def singular_task_interference(taus: Sequence[Tensor], rank: int | None = None) -> float:
    """Singular Task Interference of one layer: ``‖(ÛᵀÛ − I) Σ̂ (V̂ᵀV̂ − I)‖₁`` (entrywise L1).

    Math: ``τ_t = U_t Σ_t V_tᵀ``; ``Û = [U_1,r | … | U_T,r]``, ``V̂`` likewise (column-wise concatenation),
    ``Σ̂ = blockdiag(Σ_t,r)``; ``r = ⌊min(m, n)/T⌋`` by default. Zero iff the tasks' singular bases are mutually
    orthogonal (no cross-task interference).

    Example:
        >>> e = torch.eye(4)
        >>> singular_task_interference([e[:, :2] @ e[:2], e[:, 2:] @ e[2:]], rank=2)
        0.0

    Reference: Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging",
    CVPR 2025, arXiv 2412.00081.
    """
    if len(taus) == 0:
        raise ValueError("need at least one task matrix")
    shape = taus[0].shape
    for i, t in enumerate(taus):
        if not isinstance(t, Tensor) or t.dim() != 2:
            raise ValueError(f"taus[{i}] must be a 2-D tensor")
        if t.shape != shape:
            raise ValueError(f"shape mismatch: taus[{i}] is {tuple(t.shape)}, taus[0] is {tuple(shape)}")
    T = len(taus)
    r = rank if rank is not None else max(1, min(shape) // T)
    Us, Ss, Vs = [], [], []
    for t in taus:
        U, S, Vh = torch.linalg.svd(t.to(torch.float64), full_matrices=False)
        Us.append(U[:, :r])
        Ss.append(S[:r])
        Vs.append(Vh[:r].T)
    U, V, S = torch.cat(Us, 1), torch.cat(Vs, 1), torch.diag(torch.cat(Ss))
    eye = torch.eye(U.shape[1], dtype=torch.float64)
    return float(((U.T @ U - eye) @ S @ (V.T @ V - eye)).abs().sum())


def _distance(a: Tensor, b: Tensor, kind: str) -> float:
    if kind == "disagreement":
        return float((a.argmax(-1) != b.argmax(-1)).to(torch.float64).mean())
    if kind == "l2":
        den = float(b.to(torch.float64).square().sum(-1).mean())
        num = float((a.to(torch.float64) - b.to(torch.float64)).square().sum(-1).mean())
        return num / den if den > 0 else num
    raise ValueError(f"distance must be 'disagreement' or 'l2', got {kind!r}")


def _combine(base: StateDict, tvs: Sequence[StateDict], alphas: Sequence[float]) -> dict[str, Tensor]:
    out = {}
    for k, v in base.items():
        if k in tvs[0]:
            out[k] = (v.to(tvs[0][k].dtype) + sum(a * tv[k] for a, tv in zip(alphas, tvs))).to(v.dtype)
        else:
            out[k] = v
    return out


def weight_disentanglement_error(
    forward: Callable[[StateDict, Tensor], Tensor] | Sequence[Callable[[StateDict, Tensor], Tensor]],
    base: StateDict,
    task_vecs: Sequence[StateDict],
    task_inputs: Sequence[Tensor],
    alphas: Sequence[float],
    distance: Literal["disagreement", "l2"] = "disagreement",
) -> float:
    """Weight disentanglement error ξ(α) of task arithmetic on data.

    Math: ``ξ(α) = Σ_t E_{x∈D_t} dist(f(x; θ_0 + α_t τ_t), f(x; θ_0 + Σ_j α_j τ_j))`` with ``dist`` the prediction
    disagreement rate ``1[argmax f ≠ argmax f']`` (the paper's choice) or the relative squared L2 distance of the
    outputs. Zero ⇔ each task's behaviour is unaffected by adding the other task vectors.

    Args:
        forward: ``forward(params, x) -> outputs [N, C]`` (e.g. ``lambda p, x: torch.func.functional_call(model, p, x)``),
            or one such callable per task (e.g. a shared backbone with per-task heads).
        base: pre-trained parameters θ_0.
        task_vecs: task vectors τ_t (:func:`task_vectors`), keys a subset of ``base``.
        task_inputs: one input batch ``x ∈ D_t`` per task.
        alphas: coefficients α_t.
        distance: ``"disagreement"`` or ``"l2"``.

    Example:
        >>> f = lambda p, x: x @ p["w"]
        >>> base = {"w": torch.eye(2)}
        >>> tv = [{"w": torch.zeros(2, 2)}, {"w": torch.zeros(2, 2)}]
        >>> weight_disentanglement_error(f, base, tv, [torch.randn(4, 2)] * 2, [1.0, 1.0])
        0.0

    Reference: Ortiz-Jiménez, Favero, Frossard, "Task Arithmetic in the Tangent Space", NeurIPS 2023,
    arXiv 2305.12827, Eq. 4.
    """
    T = len(task_vecs)
    if len(task_inputs) != T or len(alphas) != T:
        raise ValueError(
            f"need one input batch and one alpha per task: {T} task vectors, "
            f"{len(task_inputs)} input batches, {len(alphas)} alphas"
        )
    if T == 0:
        raise ValueError("need at least one task vector")
    fwds = list(forward) if isinstance(forward, Sequence) else [forward] * T
    if len(fwds) != T:
        raise ValueError(f"got {len(fwds)} forward functions for {T} tasks")
    _check_state_dicts(task_vecs, "task_vecs")
    missing = [k for k in task_vecs[0] if k not in base]
    if missing:
        raise ValueError(f"task vector keys missing from base: {missing[:5]}")
    with torch.no_grad():
        joint = _combine(base, task_vecs, alphas)
        total = 0.0
        for t in range(T):
            single = _combine(base, [task_vecs[t]], [alphas[t]])
            total += _distance(fwds[t](single, task_inputs[t]), fwds[t](joint, task_inputs[t]), distance)
    return total


def disentanglement_grid(
    forward: Callable[[StateDict, Tensor], Tensor],
    base: StateDict,
    task_vecs: Sequence[StateDict],
    task_inputs: Sequence[Tensor],
    grid: Sequence[float],
    pair: tuple[int, int] = (0, 1),
    distance: Literal["disagreement", "l2"] = "disagreement",
) -> Tensor:
    """ξ(α_i, α_j) of tasks ``pair = (i, j)`` on ``grid × grid`` (others at α = 0): the paper's heat map.

    Example:
        >>> f = lambda p, x: x @ p["w"]
        >>> tv = [{"w": torch.zeros(2, 2)}] * 2
        >>> disentanglement_grid(f, {"w": torch.eye(2)}, tv, [torch.randn(3, 2)] * 2, [0.0, 1.0]).shape
        torch.Size([2, 2])

    Reference: Ortiz-Jiménez et al., NeurIPS 2023, arXiv 2305.12827, Fig. 3.
    """
    i, j = pair
    if i == j or not (0 <= i < len(task_vecs) and 0 <= j < len(task_vecs)):
        raise ValueError(f"pair must name two different tasks in 0..{len(task_vecs) - 1}, got {pair}")
    out = torch.zeros(len(grid), len(grid), dtype=torch.float64)
    for a, ai in enumerate(grid):
        for b, bj in enumerate(grid):
            out[a, b] = weight_disentanglement_error(
                forward,
                base,
                [task_vecs[i], task_vecs[j]],
                [task_inputs[i], task_inputs[j]],
                [ai, bj],
                distance,
            )
    return out

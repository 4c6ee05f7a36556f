"""Merge conformance checks that test each method's *purpose*, as plain functions the suites and mutants call.

Every check takes the method under test as ``fn`` (default: the registered one) and raises ``AssertionError``
when the method does not do what it claims. Two kinds:

* **Declared properties** (read from the registry, see :func:`orthokit.merge.registry.register_merge_method`):
  ``one_model_exact`` (merging one fine-tune returns it), ``idempotent`` (merging T identical fine-tunes returns
  that model) and ``base_fixed_point`` (fine-tunes equal to the base return the base); each is ``False`` or the
  parameters under which it holds.
* **Closed forms**, one per method, computed here independently in float64 (numpy/scipy, written from the
  equations in docs/merge/*.md and /work/shared/reference/merge.md — never by calling orthokit): task arithmetic
  θ₀ + λΣw_tτ_t; TIES on a hand-computed example (trim, elect, disjoint mean); DARE's expectation over many seeds;
  DC-Merge, DO-Merging (including its Adam orthogonalization) and OrthoMerge against full re-derivations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

import orthokit.merge  # noqa: F401  (registers every method)
from orthokit.merge.registry import MERGE_METHODS, method_schema, validate_params

PROPERTIES = ("one_model_exact", "idempotent", "base_fixed_point")
D64 = torch.float64


def _fn(name: str, fn: Callable[..., Tensor] | None) -> Callable[..., Tensor]:
    return MERGE_METHODS.get(name) if fn is None else fn


def call(
    name: str,
    base: Any,
    tensors: Sequence[Any],
    fn: Callable[..., Tensor] | None = None,
    seed: int = 0,
    **params: Any,
) -> Tensor:
    """Call merge method ``name`` (or the substitute ``fn`` with its signature) as the engine does."""
    schema = method_schema(name)
    kw = validate_params(name, params, n_models=len(tensors))
    if schema.takes_generator:
        kw["generator"] = torch.Generator().manual_seed(seed)
    if schema.takes_name:
        kw["name"] = "model.layers.0.mlp.weight"
    return _fn(name, fn)(base, list(tensors), **kw)


def _close(got: Tensor, want: Tensor | np.ndarray, tol: float, what: str) -> None:
    w = torch.as_tensor(np.asarray(want), dtype=D64)
    g = got.to(D64)
    assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} != {tuple(w.shape)}"
    err = float((g - w).abs().max()) if g.numel() else 0.0
    assert err <= tol * max(1.0, float(w.abs().max())), f"{what}: max error {err:.3g} > {tol:.1g}"


# ------------------------------------------------------------------------------------------ declared properties


def _rot(n: int, g: torch.Generator, scale: float = 0.4) -> Tensor:
    a = torch.randn(n, n, generator=g, dtype=D64)
    return torch.linalg.matrix_exp(scale * (a - a.T) / 2)


def _sample(kind: str, seed: int = 0) -> tuple[Tensor, Any]:
    """(base, one fine-tune) in the method's input convention."""
    g = torch.Generator().manual_seed(seed)
    if kind == "full":
        base = torch.randn(9, 6, generator=g, dtype=D64)
        return base, base + 0.3 * torch.randn(9, 6, generator=g, dtype=D64)
    if kind == "lora":
        base = torch.randn(7, 10, generator=g, dtype=D64)
        return base, (torch.randn(2, 10, generator=g, dtype=D64), torch.randn(7, 2, generator=g, dtype=D64))
    if kind == "orthogonal":
        return _rot(5, g), _rot(5, g)
    raise ValueError(kind)


def _expected_single(kind: str, base: Tensor, ft: Any) -> Tensor:
    if kind == "lora":
        A, B = ft
        return base + B @ A
    return ft


def declared(name: str) -> dict[str, Mapping[str, Any] | bool]:
    caps = MERGE_METHODS.capabilities(name)
    return {p: caps.get(p) for p in PROPERTIES}


def check_one_model_exact(name: str, fn: Callable[..., Tensor] | None = None) -> None:
    """merge(base, [ft]) == ft under the declared parameters (3 random draws)."""
    params = declared(name)["one_model_exact"]
    assert params is not False, f"{name} does not declare one_model_exact"
    kind = MERGE_METHODS.capabilities(name)["inputs"]
    for seed in range(3):
        base, ft = _sample(kind, seed)
        out = call(name, base, [ft], fn, **dict(params))  # type: ignore[arg-type]
        _close(out, _expected_single(kind, base, ft).numpy(), 1e-10, f"{name}: one model")


def check_idempotent(name: str, fn: Callable[..., Tensor] | None = None, copies: int = 3) -> None:
    """merge(base, [ft] * T) == ft under the declared parameters."""
    params = declared(name)["idempotent"]
    assert params is not False, f"{name} does not declare idempotent"
    kind = MERGE_METHODS.capabilities(name)["inputs"]
    for seed in range(3):
        base, ft = _sample(kind, seed)
        same = [tuple(x.clone() for x in ft) if kind == "lora" else ft.clone() for _ in range(copies)]
        out = call(name, base, same, fn, weight=[0.5, 1.0, 2.0][:copies], **dict(params))  # type: ignore[arg-type]
        _close(out, _expected_single(kind, base, ft).numpy(), 1e-10, f"{name}: {copies} identical models")


def check_base_fixed_point(name: str, fn: Callable[..., Tensor] | None = None) -> None:
    """Fine-tunes equal to the base (zero task vectors / zero adapters) return the base."""
    params = declared(name)["base_fixed_point"]
    assert params is not False, f"{name} does not declare base_fixed_point"
    kind = MERGE_METHODS.capabilities(name)["inputs"]
    base, ft = _sample(kind)
    if kind == "lora":
        fts = [(ft[0], torch.zeros_like(ft[1]))] * 2
    else:
        fts = [base.clone(), base.clone()]
    out = call(name, base, fts, fn, **dict(params))  # type: ignore[arg-type]
    _close(out, base.numpy(), 1e-12, f"{name}: fine-tunes equal to the base")


CHECKS = {
    "one_model_exact": check_one_model_exact,
    "idempotent": check_idempotent,
    "base_fixed_point": check_base_fixed_point,
}


# ------------------------------------------------------------------------------------------ closed forms


def _fts(n: int = 3, shape: tuple[int, ...] = (6, 5), seed: int = 0) -> tuple[Tensor, list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=g, dtype=D64)
    return base, [base + torch.randn(*shape, generator=g, dtype=D64) for _ in range(n)]


def check_task_arithmetic(fn: Callable[..., Tensor] | None = None) -> None:
    """θ₀ + λ Σ w_t τ_t, and ÷ Σ w_t with ``normalize`` (Ilharco et al. 2023)."""
    base, fts = _fts()
    b, F = base.numpy(), [f.numpy() for f in fts]
    w, lam = [0.5, 1.0, 2.0], 0.7
    delta = sum(wi * (f - b) for wi, f in zip(w, F))
    _close(
        call("task_arithmetic", base, fts, fn, weight=w, **{"lambda": lam}),
        b + lam * delta,
        1e-12,
        "task_arithmetic",
    )
    _close(
        call("task_arithmetic", base, fts, fn, weight=w, normalize=True, **{"lambda": lam}),
        b + lam * delta / sum(w),
        1e-12,
        "task_arithmetic normalize",
    )


#: TIES by hand (density 0.5 ⇒ the 2 largest |τ| of 4 per model survive):
#:   τ1 = [ 4, -1,  0.5, -3] → [ 4,  0, 0, -3]
#:   τ2 = [-2,  3, -0.2, -1] → [-2,  3, 0,  0]   (weight 2 → [-4, 6, 0, 0])
#:   τ3 = [ 1, -2,  0.1,  2] → [ 0, -2, 0,  2]
#:   Σ w τ = [0, 4, 0, -1] → elected sign [+, +, + (zero sum → +), −]
#:   agreeing: e0: τ1 (w 1) → 4/1;  e1: τ2 (w 2) → 6/2;  e2: none → 0;  e3: τ1 (w 1) → −3/1
#:   disjoint weighted mean [4, 3, 0, -3]; disjoint sum (normalize false) [4, 6, 0, -3]
TIES_TAUS = ([4.0, -1.0, 0.5, -3.0], [-2.0, 3.0, -0.2, -1.0], [1.0, -2.0, 0.1, 2.0])
TIES_WEIGHTS = [1.0, 2.0, 1.0]
TIES_MEAN = [4.0, 3.0, 0.0, -3.0]
TIES_SUM = [4.0, 6.0, 0.0, -3.0]


def check_ties(fn: Callable[..., Tensor] | None = None) -> None:
    """TIES trim / elect / disjoint mean on the hand-computed example above (Yadav et al. 2023)."""
    base = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=D64)
    fts = [base + torch.tensor(t, dtype=D64) for t in TIES_TAUS]
    lam = 0.5
    out = call("ties", base, fts, fn, weight=TIES_WEIGHTS, density=0.5, **{"lambda": lam})
    _close(out, base.numpy() + lam * np.array(TIES_MEAN), 1e-12, "ties disjoint mean")
    out = call("ties", base, fts, fn, weight=TIES_WEIGHTS, density=0.5, normalize=False, **{"lambda": lam})
    _close(out, base.numpy() + lam * np.array(TIES_SUM), 1e-12, "ties disjoint sum")


def check_dare_expectation(name: str, fn: Callable[..., Tensor] | None = None, seeds: int = 400) -> None:
    """DARE keeps each entry with probability ρ (= density) and rescales so that E[δ̃] = δ (Yu et al. 2024).

    δ has equal magnitudes and random signs, so the L1 rescale (mergekit's) equals the paper's 1/ρ in
    expectation exactly. Checked: kept fraction ≈ ρ, and the mean over seeds of the merged delta ≈ λ w δ
    (5σ per entry, 3σ for the average, σ from the Bernoulli variance).
    """
    n, rho, w, lam = 256, 0.3, 0.8, 1.5
    g = torch.Generator().manual_seed(5)
    delta = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(D64)
    base = torch.randn(n, generator=g, dtype=D64)
    outs = torch.stack(
        [
            call(name, base, [base + delta], fn, seed=s, weight=w, density=rho, **{"lambda": lam}) - base
            for s in range(seeds)
        ]
    )
    kept = float((outs != 0).double().mean())
    assert abs(kept - rho) < 5 * math.sqrt(rho * (1 - rho) / (n * seeds)), (
        f"{name}: kept fraction {kept:.3f} != {rho}"
    )
    ratio = outs.mean(0) / (lam * w * delta)
    sigma = math.sqrt((1 - rho) / rho / seeds)
    assert float((ratio - 1).abs().max()) < 5 * sigma, (
        f"{name}: E[δ̃]/δ off by {float((ratio - 1).abs().max()):.3f}"
    )
    assert abs(float(ratio.mean()) - 1) < 3 * sigma / math.sqrt(n), (
        f"{name}: mean E[δ̃]/δ = {float(ratio.mean()):.4f}"
    )


# --- DC-Merge, re-derived in numpy from docs/merge/dc_merge.md / reference §3.9


def _polar_np(X: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(X, full_matrices=False)
    return U @ Vt


def ref_dc_merge(
    W0: np.ndarray,
    Ws: Sequence[np.ndarray],
    w: Sequence[float],
    lam: float,
    smoothing: str,
    rho: float,
    keep_fraction: float,
    rank: int = 0,
) -> np.ndarray:
    """DC-Merge, independent float64 re-derivation (numpy)."""
    taus = [wi * (W - W0) for wi, W in zip(w, Ws)]
    T = len(taus)
    if W0.ndim != 2:
        return W0 + lam * sum(taus) / sum(w)
    k = min(W0.shape)
    r = max(1, k // T) if rank == 0 else min(rank, max(1, k // T))
    Us, Vs, smoothed = [], [], []
    for tau in taus:
        U, S, Vt = np.linalg.svd(tau, full_matrices=False)
        s = S[:r]
        E = s.sum()
        if smoothing == "avg" and r > 1:
            s = np.full(r, E / r)
        elif smoothing == "linear" and r > 1:
            rp = min(rho, s[0] / s[-1]) if s[-1] > 0 else rho
            ell = np.linspace(rp, 1.0, r)
            s = E * ell / ell.sum()
        Us.append(U[:, :r])
        Vs.append(Vt[:r].T)
        smoothed.append(s)
    P = _polar_np(np.hstack(Us))
    Q = _polar_np(np.hstack(Vs))
    n_keep = max(math.ceil(keep_fraction * (T * r) ** 2), r)
    Ms = []
    for U, V, s in zip(Us, Vs, smoothed):
        M = P.T @ (U @ np.diag(s) @ V.T) @ Q
        flat = M.ravel().copy()
        if n_keep < flat.size:
            drop = np.argsort(-np.abs(flat), kind="stable")[n_keep:]
            flat[drop] = 0.0
        Ms.append(flat.reshape(M.shape))
    total = sum(Ms)
    merged = np.zeros_like(total)
    for i in range(total.shape[0]):
        for j in range(total.shape[1]):
            s0 = np.sign(total[i, j])
            agree = [M[i, j] for M in Ms if M[i, j] != 0 and np.sign(M[i, j]) == s0]
            merged[i, j] = sum(agree) / len(agree) if agree else 0.0
    mask = np.kron(np.eye(T), np.ones((r, r)))[: merged.shape[0], : merged.shape[1]]
    return W0 + lam * (P @ (merged * mask) @ Q.T)


def check_dc_merge(fn: Callable[..., Tensor] | None = None) -> None:
    """dc_merge vs :func:`ref_dc_merge` for every smoothing, a partial filter, weights and λ; 1-D tensors."""
    base, fts = _fts(3, (9, 7), seed=3)
    b, F = base.numpy(), [f.numpy() for f in fts]
    w = [1.0, 0.5, 2.0]
    for smoothing in ("linear", "avg", "none"):
        for kf in (1.0, 0.2):
            got = call(
                "dc_merge", base, fts, fn, weight=w, smoothing=smoothing, keep_fraction=kf, **{"lambda": 0.8}
            )
            _close(
                got,
                ref_dc_merge(b, F, w, 0.8, smoothing, 5.0, kf),
                1e-9,
                f"dc_merge smoothing={smoothing} keep_fraction={kf}",
            )
    got = call("dc_merge", base, fts, fn, weight=w, rank=1, keep_fraction=1.0)
    _close(got, ref_dc_merge(b, F, w, 1.0, "linear", 5.0, 1.0, rank=1), 1e-9, "dc_merge rank=1")
    # (identical models are not checked: the stacked bases are rank-deficient, so the polar factor, and the
    # result, depend on the SVD's arbitrary completion — dc_merge declares idempotent=False)
    vb, vf = _fts(2, (5,), seed=4)
    got = call("dc_merge", vb, vf, fn, weight=[1.0, 3.0], **{"lambda": 2.0})
    _close(
        got,
        ref_dc_merge(vb.numpy(), [f.numpy() for f in vf], [1.0, 3.0], 2.0, "linear", 5.0, 1e-3),
        1e-12,
        "dc_merge 1-D",
    )


# --- DO-Merging, re-derived from docs/merge/do_merging.md (Adam by hand, hand-written gradient)


def ref_orthogonalize(mats: Sequence[np.ndarray], gamma: float, steps: int, lr: float) -> list[np.ndarray]:
    """min Σ_{i<j}‖X̂_i X̂_jᵀ‖² + γ Σ‖D_t‖² over X̂_t = X_t/‖X_t‖ + D_t by Adam (β=(0.9, 0.999), ε=1e-8), rescaled."""
    norms = [np.linalg.norm(x) for x in mats]
    unit = [x / n if n > 0 else x for x, n in zip(mats, norms)]
    D = [np.zeros_like(x) for x in mats]
    m = [np.zeros_like(x) for x in mats]
    v = [np.zeros_like(x) for x in mats]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        X = [u + d for u, d in zip(unit, D)]
        grads = []
        for i in range(len(X)):
            g = 2 * gamma * D[i]
            for j in range(len(X)):
                if j != i:
                    g = g + 2 * (X[i] @ X[j].T) @ X[j]
            grads.append(g)
        for i, g in enumerate(grads):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            mhat = m[i] / (1 - b1**t)
            vhat = v[i] / (1 - b2**t)
            D[i] = D[i] - lr * mhat / (np.sqrt(vhat) + eps)
    return [(u + d) * n for u, d, n in zip(unit, D, norms)]


def _ties_np(mats: Sequence[np.ndarray], w: Sequence[float], density: float) -> np.ndarray:
    trimmed = []
    for d in mats:
        k = max(1, int(math.floor(density * d.size)))
        keep = np.zeros(d.size, dtype=bool)
        keep[np.argsort(-np.abs(d.ravel()), kind="stable")[:k]] = True
        trimmed.append(np.where(keep.reshape(d.shape), d, 0.0))
    total = sum(wi * t for wi, t in zip(w, trimmed))
    sign = np.where(total >= 0, 1.0, -1.0)
    num = sum(np.where((np.sign(t) == sign) & (t != 0), wi * t, 0.0) for wi, t in zip(w, trimmed))
    den = sum(np.where((np.sign(t) == sign) & (t != 0), wi, 0.0) for wi, t in zip(w, trimmed))
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def ref_do_merging(
    W0: np.ndarray | None,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    w: Sequence[float],
    lam: float,
    orthogonalize: bool,
    gamma: float,
    steps: int,
    lr: float,
    direction_merge: str,
    density: float,
) -> np.ndarray:
    """DO-Merging: orthogonalize A (rows) and B (columns), decouple column magnitude/direction, merge apart."""
    As = [a for a, _ in pairs]
    Bs = [b for _, b in pairs]
    if orthogonalize and len(pairs) > 1:
        As = ref_orthogonalize(As, gamma, steps, lr)
        Bs = [x.T for x in ref_orthogonalize([b.T for b in Bs], gamma, steps, lr)]
    prods = [B @ A for A, B in zip(As, Bs)]
    mags = [np.linalg.norm(P, axis=0) for P in prods]  # ‖(B̂_t Â_t)[:, j]‖
    dirs = [np.where(mg > 0, P / np.where(mg > 0, mg, 1.0), 0.0) for P, mg in zip(prods, mags)]
    D = sum(wi * d for wi, d in zip(w, dirs)) if direction_merge == "sum" else _ties_np(dirs, w, density)
    dn = np.linalg.norm(D, axis=0)
    D = np.where(dn > 0, D / np.where(dn > 0, dn, 1.0), 0.0)
    mstar = sum(wi * mg for wi, mg in zip(w, mags)) / sum(w)  # weighted mean of the magnitudes
    delta = lam * D * mstar
    return delta if W0 is None else W0 + delta


def check_do_merging(fn: Callable[..., Tensor] | None = None) -> None:
    """do_merging vs :func:`ref_do_merging`: with/without orthogonalization, sum and TIES directions."""
    g = torch.Generator().manual_seed(7)
    pairs = [
        (torch.randn(r, 10, generator=g, dtype=D64), torch.randn(7, r, generator=g, dtype=D64))
        for r in (2, 3, 2)
    ]
    base = torch.randn(7, 10, generator=g, dtype=D64)
    npairs = [(a.numpy(), b.numpy()) for a, b in pairs]
    w = [1.0, 2.0, 0.5]
    for orth, dm in ((False, "sum"), (True, "sum"), (True, "ties"), (False, "ties")):
        got = call(
            "do_merging",
            base,
            pairs,
            fn,
            weight=w,
            orthogonalize=orth,
            steps=30,
            gamma=0.5,
            lr=0.02,
            direction_merge=dm,
            density=0.4,
            **{"lambda": 0.9},
        )
        want = ref_do_merging(base.numpy(), npairs, w, 0.9, orth, 0.5, 30, 0.02, dm, 0.4)
        _close(got, want, 1e-9, f"do_merging orthogonalize={orth} direction_merge={dm}")


# --- OrthoMerge, re-derived with scipy (logm/expm/svd) from docs/merge/orthomerge.md / reference §3.8


def _kabsch(M: np.ndarray) -> np.ndarray:
    U, _, Vt = scipy.linalg.svd(M)
    d = np.ones(M.shape[0])
    d[-1] = np.sign(np.linalg.det(U @ Vt))
    return U @ np.diag(d) @ Vt


def _logm(R: np.ndarray) -> np.ndarray:
    """Principal log of a rotation from its complex Schur form (R is normal ⇒ T is diagonal, Z unitary)."""
    T, Z = scipy.linalg.schur(R.astype(complex), output="complex")
    A = np.real(Z @ np.diag(np.log(np.diag(T))) @ Z.conj().T)
    return (A - A.T) / 2


def _lie(As: Sequence[np.ndarray], w: Sequence[float], correction: bool) -> np.ndarray:
    S = sum(wi * a for wi, a in zip(w, As))
    if not correction:
        return S / sum(w)
    mag = sum(wi * np.linalg.norm(a) for wi, a in zip(w, As)) / sum(w)
    return S * (mag / np.linalg.norm(S))


def ref_orthomerge(
    W0: np.ndarray,
    Ws: Sequence[np.ndarray],
    w: Sequence[float],
    lam: float,
    lam_res: float,
    residual: str,
    side: str,
) -> np.ndarray:
    """OrthoMerge "G": Procrustes rotation on SO(d) + magnitude-corrected Lie mean + Euclidean residual mean/sum."""
    shape = W0.shape
    W0 = W0.reshape(shape[0], -1)
    Ws = [W.reshape(W0.shape) for W in Ws]
    right = side == "right" or (side == "auto" and W0.shape[1] <= W0.shape[0])
    Rs = [_kabsch(W0.T @ W) if right else _kabsch(W @ W0.T) for W in Ws]
    rot = [W0 @ R if right else R @ W0 for R in Rs]
    Rm = scipy.linalg.expm(lam * _lie([_logm(R) for R in Rs], w, True))
    res = [W - r for W, r in zip(Ws, rot)]
    E = sum(wi * e for wi, e in zip(w, res))
    E = E / sum(w) if residual == "mean" else E
    return ((W0 @ Rm if right else Rm @ W0) + lam_res * E).reshape(shape)


def check_orthomerge(fn: Callable[..., Tensor] | None = None) -> None:
    """orthomerge vs :func:`ref_orthomerge` on tall, wide and 4-D (flattened) weights, both residual rules."""
    w = [1.0, 2.0, 0.5]
    for shape, side in (((9, 5), "auto"), ((5, 9), "auto"), ((6, 6), "left"), ((4, 3, 2, 2), "auto")):
        base, fts = _fts(3, shape, seed=11)
        fts = [base + 0.3 * (f - base) for f in fts]
        for residual in ("mean", "sum"):
            got = call(
                "orthomerge",
                base,
                fts,
                fn,
                weight=w,
                side=side,
                residual_merge=residual,
                residual_lambda=0.6,
                **{"lambda": 0.8},
            )
            want = ref_orthomerge(base.numpy(), [f.numpy() for f in fts], w, 0.8, 0.6, residual, side)
            _close(got, want, 1e-9, f"orthomerge {shape} side={side} residual={residual}")


def check_orthomerge_oft(fn: Callable[..., Tensor] | None = None) -> None:
    """orthomerge_oft: R₀ exp(λ A*), A* the magnitude-corrected Lie mean of log(R₀ᵀ R_t) (scipy logm/expm)."""
    g = torch.Generator().manual_seed(13)
    R0 = _rot(6, g)
    Rs = [_rot(6, g, 0.6) for _ in range(3)]
    w = [1.0, 0.5, 2.0]
    for base in (None, R0):
        for corr in (True, False):
            rel = [r.numpy() if base is None else R0.numpy().T @ r.numpy() for r in Rs]
            A = _lie([_logm(r) for r in rel], w, corr)
            want = scipy.linalg.expm(0.7 * A)
            want = want if base is None else R0.numpy() @ want
            got = call("orthomerge_oft", base, Rs, fn, weight=w, magnitude_correction=corr, **{"lambda": 0.7})
            _close(got, want, 1e-9, f"orthomerge_oft base={base is not None} correction={corr}")


#: The closed-form check of every registered method (the suite asserts each method has one).
CLOSED_FORM: dict[str, Callable[..., None]] = {
    "task_arithmetic": check_task_arithmetic,
    "ties": check_ties,
    "dare_ties": lambda fn=None: check_dare_expectation("dare_ties", fn),
    "dare_linear": lambda fn=None: check_dare_expectation("dare_linear", fn),
    "dare": lambda fn=None: check_dare_expectation("dare", fn),
    "dc_merge": check_dc_merge,
    "do_merging": check_do_merging,
    "orthomerge": check_orthomerge,
    "orthomerge_oft": check_orthomerge_oft,
}
from .conformance_mergekit_b import CLOSED_FORM as _B  # noqa: E402

CLOSED_FORM.update(_B)
from .conformance_mergekit_a import CLOSED_FORM as _A  # noqa: E402

CLOSED_FORM.update(_A)

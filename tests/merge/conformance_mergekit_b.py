"""Closed-form checks for model_stock, breadcrumbs(_ties), della(_linear) and sce, in float64 numpy.

Each reference below is written from the method's equations (docs/merge/{model_stock,breadcrumbs,della,sce}.md,
the papers, mergekit 0.1.5's definitions) — never by calling orthokit. Every check takes the method under test as
``fn`` (default: the registered one) and raises ``AssertionError`` when it does not do what it claims; the mutants
in ``test_mutants_mergekit_b.py`` must fail them. ``tests/merge/conformance.py`` merges :data:`CLOSED_FORM` into
the suite-wide table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

import orthokit.merge  # noqa: F401  (registers every method)
from orthokit.merge.registry import MERGE_METHODS, method_schema, validate_params

# (self-contained: conformance.py imports this module at its end, so importing it back would be circular)
D64 = torch.float64


def call(
    name: str,
    base: Any,
    tensors: Sequence[Any],
    fn: Callable[..., Tensor] | None = None,
    seed: int = 0,
    **params: Any,
) -> Tensor:
    """Call merge method ``name`` (or the substitute ``fn``) as the engine does: validated params, seeded generator."""
    kw = validate_params(name, params, n_models=len(tensors))
    if method_schema(name).takes_generator:
        kw["generator"] = torch.Generator().manual_seed(seed)
    return (MERGE_METHODS.get(name) if fn is None else fn)(base, list(tensors), **kw)


def _close(got: Tensor, want: np.ndarray, tol: float, what: str) -> None:
    w = torch.as_tensor(np.asarray(want), dtype=D64)
    g = got.to(D64)
    assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} != {tuple(w.shape)}"
    err = float((g - w).abs().max()) if g.numel() else 0.0
    assert err <= tol * max(1.0, float(w.abs().max())), f"{what}: max error {err:.3g} > {tol:.1g}"


def _fts(n: int, shape: tuple[int, ...], seed: int) -> tuple[Tensor, list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=g, dtype=D64)
    return base, [base + torch.randn(*shape, generator=g, dtype=D64) for _ in range(n)]


# ------------------------------------------------------------------------------------------ model stock


def ref_model_stock(
    W0: np.ndarray, Ws: Sequence[np.ndarray], filter_wise: bool, w: Sequence[float] | None = None
) -> np.ndarray:
    """θ = t · mean θ_t + (1 − t) θ₀, t = N c / (1 + (N − 1) c), c the mean pairwise cosine of the task vectors."""
    shape = W0.shape
    if filter_wise:
        b = W0.reshape(1, -1) if W0.ndim == 1 else W0
        fs = [W.reshape(b.shape) for W in Ws]
    else:
        b = W0.reshape(1, -1)
        fs = [W.reshape(1, -1) for W in Ws]
    taus = [f - b for f in fs]
    n = len(taus)
    cos = []
    for i in range(n):
        for j in range(i + 1, n):
            num = (taus[i] * taus[j]).sum(-1)
            den = np.maximum(np.linalg.norm(taus[i], axis=-1) * np.linalg.norm(taus[j], axis=-1), 1e-6)
            cos.append(np.clip(num / den, -1, 1))
    c = np.mean(cos, axis=0)[..., None]
    d = 1 + (n - 1) * c
    t = np.where(np.abs(d) < 1e-6, 0.0, n * c / np.where(np.abs(d) < 1e-6, 1.0, d))
    ww = np.ones(n) if w is None else np.asarray(w, dtype=float)
    mean = sum(wi * f for wi, f in zip(ww, fs)) / ww.sum()
    return (t * mean + (1 - t) * b).reshape(shape)


def check_model_stock(fn: Callable[..., Tensor] | None = None) -> None:
    """model_stock vs :func:`ref_model_stock`: per tensor and filter-wise, 2 and 4 fine-tunes, a 1-D tensor,
    correlated task vectors (t near 1) and the weighted average (orthokit's extension)."""
    for n, shape, seed in ((2, (6, 5), 0), (4, (7, 3), 1), (3, (11,), 2)):
        base, fts = _fts(n, shape, seed=seed)
        g = torch.Generator().manual_seed(seed + 10)
        shared = torch.randn(*shape, generator=g, dtype=D64)
        fts = [base + shared + 0.5 * (f - base) for f in fts]  # c ≈ 0.8: t well inside (0, 1)
        b, F = base.numpy(), [f.numpy() for f in fts]
        for fw in (False, True):
            got = call("model_stock", base, fts, fn, filter_wise=fw)
            _close(got, ref_model_stock(b, F, fw), 1e-12, f"model_stock n={n} {shape} filter_wise={fw}")
        w = [0.5 + i for i in range(n)]
        got = call("model_stock", base, fts, fn, weight=w)
        _close(got, ref_model_stock(b, F, False, w), 1e-12, f"model_stock weighted n={n}")


# ------------------------------------------------------------------------------------------ breadcrumbs


def ref_breadcrumbs_mask(d: np.ndarray, density: float, gamma: float) -> np.ndarray:
    """Keep ascending-|δ| positions [n_bot, n_bot + ⌊ρn⌋), n_bot = max(0, n − ⌊ρn⌋ − ⌊γn⌋) (mergekit 0.1.5)."""
    if density >= 1:
        return np.ones(d.shape, dtype=bool)
    n = d.size
    target, n_top = int(density * n), int(gamma * n)
    n_bot = max(0, n - target - n_top)
    order = np.argsort(np.abs(d.ravel()), kind="stable")
    keep = np.zeros(n, dtype=bool)
    keep[order[n_bot : n_bot + target]] = True
    return keep.reshape(d.shape)


def ref_breadcrumbs(
    W0: np.ndarray,
    Ws: Sequence[np.ndarray],
    w: Sequence[float],
    dens: Sequence[float],
    gam: Sequence[float],
    lam: float,
    normalize: bool,
    rescale: bool,
    ties: bool,
) -> np.ndarray:
    """Breadcrumbs masks (+ optional L1 rescale), then a weighted sum or a TIES disjoint sum/mean."""
    ds = []
    for W, rho, g in zip(Ws, dens, gam):
        d = W - W0
        m = np.where(ref_breadcrumbs_mask(d, rho, g), d, 0.0)
        if rescale and np.abs(m).sum() > 1e-7 and np.abs(d).sum() > 1e-7:
            m = m * np.abs(d).sum() / np.abs(m).sum()
        ds.append(m)
    wd = [wi * d for wi, d in zip(w, ds)]
    if not ties:
        out = sum(wd)
        return W0 + lam * (out / sum(w) if normalize else out)
    sign = np.where(sum(wd) >= 0, 1.0, -1.0)
    agree = [(np.sign(x) == sign) & (x != 0) for x in wd]
    num = sum(np.where(a, x, 0.0) for a, x in zip(agree, wd))
    den = sum(np.where(a, wi, 0.0) for a, wi in zip(agree, w))
    return W0 + lam * (num / np.where(den == 0, 1.0, den) if normalize else num)


def _check_breadcrumbs(name: str, ties: bool, fn: Callable[..., Tensor] | None) -> None:
    base, fts = _fts(3, (10, 9), seed=21)
    b, F = base.numpy(), [f.numpy() for f in fts]
    w, dens, gam = [1.0, 0.5, 2.0], [0.5, 0.7, 0.3], [0.05, 0.1, 0.0]
    for normalize in (False, True):
        for rescale in (False, True):
            got = call(
                name,
                base,
                fts,
                fn,
                weight=w,
                density=dens,
                gamma=gam,
                normalize=normalize,
                rescale=rescale,
                **{"lambda": 0.8},
            )
            want = ref_breadcrumbs(b, F, w, dens, gam, 0.8, normalize, rescale, ties)
            _close(got, want, 1e-12, f"{name} normalize={normalize} rescale={rescale}")
    # the snapshot bug: n_top = 0 (a 64-entry bias at gamma 0.01) must keep ⌊0.9·64⌋ = 57 entries, not none
    vb, vf = _fts(1, (64,), seed=22)
    got = call(name, vb, vf, fn, density=0.9, gamma=0.01)
    want = ref_breadcrumbs(vb.numpy(), [vf[0].numpy()], [1.0], [0.9], [0.01], 1.0, False, False, ties)
    _close(got, want, 1e-12, f"{name} 64 entries, n_top = 0")
    assert int(((got - vb) != 0).sum()) == 57, f"{name}: 64-entry tensor at density 0.9 must keep 57 entries"


def check_breadcrumbs(fn: Callable[..., Tensor] | None = None) -> None:
    """breadcrumbs vs :func:`ref_breadcrumbs` (weighted sum), every normalize/rescale, and the n_top = 0 case."""
    _check_breadcrumbs("breadcrumbs", False, fn)


def check_breadcrumbs_ties(fn: Callable[..., Tensor] | None = None) -> None:
    """breadcrumbs_ties vs :func:`ref_breadcrumbs` with the TIES election (disjoint sum / mean)."""
    _check_breadcrumbs("breadcrumbs_ties", True, fn)


# ------------------------------------------------------------------------------------------ della


def ref_della_probabilities(n: int, density: float, epsilon: float) -> np.ndarray:
    """p(r) = (ρ − ε) + 2ε (r − 1)/(n − 1) for ascending-magnitude ranks r = 1…n (DELLA's MagPrune)."""
    return (density - epsilon) + 2 * epsilon * np.arange(n) / (n - 1)


def check_della(name: str, fn: Callable[..., Tensor] | None = None, seeds: int = 150) -> None:
    """DELLA's MagPrune on one model (with ``normalize: false`` TIES and linear both give λ w δ̃), many seeds.

    δ has rows of 40 distinct magnitudes in shuffled order. Checked against the closed form: the keep frequency
    of each rank within 5σ of p(r) (σ from the Bernoulli variance over rows × seeds) and its mean within 4σ of ρ;
    without rescale the surviving entries equal λ w δ exactly; with rescale ‖δ̃‖₁ = ‖δ‖₁ for every seed.
    """
    rows, n, rho, eps, w, lam = 6, 40, 0.4, 0.2, 0.8, 1.5
    g = torch.Generator().manual_seed(3)
    mags = torch.stack([torch.randperm(n, generator=g) for _ in range(rows)]).to(D64) + 1.0
    delta = mags * torch.where(torch.rand(rows, n, generator=g) < 0.5, -1.0, 1.0).to(D64)
    base = torch.randn(rows, n, generator=g, dtype=D64)
    rank = (mags - 1).long().numpy()  # ascending rank r − 1 of every entry in its row
    p = ref_della_probabilities(n, rho, eps)
    kept = np.zeros(n)
    for s in range(seeds):
        out = call(
            name,
            base,
            [base + delta],
            fn,
            seed=s,
            weight=w,
            density=rho,
            epsilon=eps,
            rescale=False,
            normalize=False,
        )
        out = (out - base).numpy()
        k = out != 0
        np.add.at(kept, rank[k], 1.0)
        assert np.allclose(out[k], (w * delta.numpy())[k], rtol=1e-12, atol=0), (
            f"{name}: kept entries changed"
        )
        scaled = call(name, base, [base + delta], fn, seed=s, weight=1.0, density=rho, epsilon=eps)
        l1 = float((scaled - base).abs().sum())
        assert abs(l1 - float(delta.abs().sum())) < 1e-9 * l1, (
            f"{name}: rescale does not preserve the L1 norm"
        )
    freq = kept / (rows * seeds)
    sigma = np.sqrt(p * (1 - p) / (rows * seeds))
    worst = float(np.max(np.abs(freq - p) / sigma))
    assert worst < 5, f"{name}: keep frequency by rank off p(r) by {worst:.1f}σ"
    mean_sigma = math.sqrt(rho * (1 - rho) / (rows * n * seeds))
    assert abs(freq.mean() - rho) < 4 * mean_sigma, f"{name}: kept fraction {freq.mean():.4f} != {rho}"
    out = call(
        name,
        base,
        [base + delta],
        fn,
        weight=w,
        density=rho,
        epsilon=eps,
        rescale=False,
        normalize=False,
        **{"lambda": lam},
    )
    k = (out - base) != 0
    torch.testing.assert_close((out - base)[k], lam * w * delta[k], rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------ sce


def ref_sce(
    W0: np.ndarray, Ws: Sequence[np.ndarray], topk: float, w: Sequence[float] | None = None
) -> np.ndarray:
    """SCE (FuseChat-2.0): variance top-k mask, η_t ∝ mean τ_t², TIES sign erase, θ₀ + Σ m η τ / max(Σ m η, 1e-6)."""
    tv = np.stack([W - W0 for W in Ws])
    if topk < 1:
        var = tv.var(axis=0)
        k = int(np.count_nonzero(var) * topk)
        keep = np.zeros(var.size, dtype=bool)
        keep[np.argsort(-var.ravel(), kind="stable")[:k]] = True
        tv = tv * keep.reshape(var.shape)
    ms = (tv**2).reshape(len(Ws), -1).mean(1)
    eta = ms / ms.sum() if ms.sum() >= 1e-6 else np.full(len(Ws), 1 / len(Ws))
    if w is not None:
        eta = eta * np.asarray(w)
    sign = np.where(tv.sum(0) >= 0, 1.0, -1.0)
    m = np.sign(tv) == sign
    e = eta.reshape(-1, *[1] * W0.ndim) * m
    return W0 + (tv * e).sum(0) / np.maximum(e.sum(0), 1e-6)


def check_sce(fn: Callable[..., Tensor] | None = None) -> None:
    """sce vs :func:`ref_sce`: task vectors of different scales (η matters), with and without selection."""
    base, fts = _fts(3, (8, 7), seed=31)
    fts = [base + s * (f - base) for s, f in zip((0.3, 1.0, 2.5), fts)]
    b, F = base.numpy(), [f.numpy() for f in fts]
    for topk in (1.0, 0.3):
        _close(
            call("sce", base, fts, fn, select_topk=topk),
            ref_sce(b, F, topk),
            1e-12,
            f"sce select_topk={topk}",
        )
    w = [1.0, 2.0, 0.5]
    _close(call("sce", base, fts, fn, weight=w), ref_sce(b, F, 1.0, w), 1e-12, "sce weighted")


CLOSED_FORM: dict[str, Callable[..., None]] = {
    "model_stock": check_model_stock,
    "breadcrumbs": check_breadcrumbs,
    "breadcrumbs_ties": check_breadcrumbs_ties,
    "della": lambda fn=None: check_della("della", fn),
    "della_linear": lambda fn=None: check_della("della_linear", fn),
    "sce": check_sce,
}

"""Closed-form checks for linear, slerp, nuslerp, multislerp, nearswap, karcher and passthrough, in float64 numpy.

Each reference is written from the method's equations (docs/merge/interpolation.md, mergekit 0.1.5's definitions,
the papers) — never by calling orthokit. Every check takes the method under test as ``fn`` (default: the
registered one) and raises ``AssertionError`` when it does not do what it claims; the mutants in
``test_mutants_mergekit_a.py`` must fail them. ``tests/merge/conformance.py`` merges :data:`CLOSED_FORM` into the
suite-wide table. The helpers below mirror conformance.py's ``call`` / ``_close`` / ``_fts`` instead of importing
them, so this module can be imported first (conformance.py imports it at its end).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

import orthokit.merge  # noqa: F401  (registers every method)
from orthokit.merge.registry import MERGE_METHODS, method_schema, validate_params

D64 = torch.float64


def call(
    name: str, base: Any, tensors: Sequence[Any], fn: Callable[..., Tensor] | None = None, **params: Any
) -> Tensor:
    """Call merge method ``name`` (or the substitute ``fn``) with config-style parameters, as the engine does."""
    kw = validate_params(name, params, n_models=len(tensors))
    if method_schema(name).takes_generator:
        kw["generator"] = torch.Generator().manual_seed(0)
    return (MERGE_METHODS.get(name) if fn is None else fn)(base, list(tensors), **kw)


def _close(got: Tensor, want: Any, tol: float, what: str) -> None:
    w = torch.as_tensor(np.asarray(want), dtype=D64)
    g = got.to(D64)
    assert g.shape == w.shape, f"{what}: shape {tuple(g.shape)} != {tuple(w.shape)}"
    err = float((g - w).abs().max()) if g.numel() else 0.0
    assert err <= tol * max(1.0, float(w.abs().max())), f"{what}: max error {err:.3g} > {tol:.1g}"


def _fts(n: int, shape: tuple[int, ...], seed: int) -> tuple[Tensor, list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=g, dtype=D64)
    return base, [base + torch.randn(*shape, generator=g, dtype=D64) for _ in range(n)]


# ------------------------------------------------------------------------------------------ linear


def check_linear(fn: Callable[..., Tensor] | None = None) -> None:
    """Σ w_t θ_t / Σ w_t (and Σ w_t θ_t without ``normalize``); the base is not an input (Wortsman et al. 2022)."""
    base, fts = _fts(3, (6, 5), seed=21)
    F = [f.numpy() for f in fts]
    w = [0.5, 1.0, 2.5]
    num = sum(wi * f for wi, f in zip(w, F))
    _close(call("linear", base, fts, fn, weight=w), num / sum(w), 1e-12, "linear")
    _close(call("linear", base, fts, fn, weight=w, normalize=False), num, 1e-12, "linear normalize=false")


# ------------------------------------------------------------------------------------------ slerp family


def ref_slerp(t: float, a: np.ndarray, b: np.ndarray, threshold: float = 0.9995) -> np.ndarray:
    """sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b on the flattened vectors; (1−t)a + tb if |cos Ω| > threshold."""
    cos = float(np.clip(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))
    if abs(cos) > threshold:
        return (1 - t) * a + t * b
    om = np.arccos(cos)
    return (np.sin((1 - t) * om) * a + np.sin(t * om) * b) / np.sin(om)


def check_slerp(fn: Callable[..., Tensor] | None = None) -> None:
    """SLERP of base and one model at several t (incl. extrapolation), and the colinear fallback to lerp."""
    base, (ft,) = _fts(1, (7, 4), seed=22)
    b, f = base.numpy(), ft.numpy()
    for t in (0.0, 0.25, 0.6, 1.0, 1.3):
        _close(call("slerp", base, [ft], fn, t=t), ref_slerp(t, b, f), 1e-12, f"slerp t={t}")
    # nearly parallel (cos Ω > 0.9995): linear interpolation of the raw tensors (norms 1 and 3)
    par = 3 * base + 1e-3 * (ft - base)
    want = 0.3 * b + 0.7 * par.numpy()
    _close(call("slerp", base, [par], fn, t=0.7), want, 1e-12, "slerp colinear fallback")
    # a right angle: the midpoint has equal components along both (sin 45° / sin 90°)
    e0 = torch.tensor([2.0, 0.0, 0.0], dtype=D64)
    e1 = torch.tensor([0.0, 4.0, 0.0], dtype=D64)
    _close(call("slerp", e0, [e1], fn, t=0.5), [2**0.5, 2 * 2**0.5, 0.0], 1e-12, "slerp right angle")


def ref_nuslerp(
    t: float, a: np.ndarray, b: np.ndarray, flatten: bool, row_wise: bool, eps: float = 1e-8
) -> np.ndarray:
    """SLERP per vector: the whole tensor, the last-axis rows, or (row_wise) the first-axis slices."""
    shape = a.shape
    if flatten:
        A, B = a.reshape(1, -1), b.reshape(1, -1)
    elif row_wise:
        A, B = np.moveaxis(a, 0, -1), np.moveaxis(b, 0, -1)
    else:
        A, B = a, b
    A2, B2 = A.reshape(-1, A.shape[-1]), B.reshape(-1, B.shape[-1])
    out = np.empty_like(A2)
    for i, (x, y) in enumerate(zip(A2, B2)):
        cos = np.clip(x @ y / (max(np.linalg.norm(x), 1e-7) * max(np.linalg.norm(y), 1e-7)), -1, 1)
        if 1 - cos**2 <= eps**2:
            out[i] = (1 - t) * x + t * y
        else:
            om = np.arccos(cos)
            out[i] = (np.sin((1 - t) * om) * x + np.sin(t * om) * y) / np.sin(om)
    out = out.reshape(A.shape)
    if row_wise and not flatten:
        out = np.moveaxis(out, -1, 0)
    return out.reshape(shape)


def check_nuslerp(fn: Callable[..., Tensor] | None = None) -> None:
    """t = w₂/(w₁+w₂); task vectors with a base; whole-tensor, row and column vectors."""
    base, fts = _fts(2, (5, 6), seed=23)
    b, (f1, f2) = base.numpy(), [f.numpy() for f in fts]
    w = [0.3, 0.9]
    t = 0.9 / 1.2
    for flatten in (True, False):
        for row_wise in (False, True):
            kw = {"weight": w, "nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}
            what = f"nuslerp flatten={flatten} row_wise={row_wise}"
            _close(
                call("nuslerp", None, fts, fn, **kw), ref_nuslerp(t, f1, f2, flatten, row_wise), 1e-12, what
            )
            want = b + ref_nuslerp(t, f1 - b, f2 - b, flatten, row_wise)
            _close(call("nuslerp", base, fts, fn, **kw), want, 1e-12, what + " with base")
    # weights summing to ~0 → t = 0.5
    want = b + ref_nuslerp(0.5, f1 - b, f2 - b, True, False)
    _close(call("nuslerp", base, fts, fn, weight=[1.0, -1.0]), want, 1e-12, "nuslerp zero weight sum")


def ref_multislerp(
    X: Sequence[np.ndarray], w: Sequence[float], normalize: bool, eps: float = 1e-8
) -> np.ndarray:
    """Barycentric SLERP: tangent space at the normalized weighted mean of the unit vectors, exp map back,
    scaled by the weighted mean norm (Goddard 2025)."""
    ww = np.asarray(w, dtype=float)
    if normalize:
        ww = ww / ww.sum()
    flat = [x.ravel() for x in X]
    norms = np.array([np.linalg.norm(x) for x in flat])
    U = [x / (n + eps) for x, n in zip(flat, norms)]
    m = sum(wi * u for wi, u in zip(ww, U))
    m = m / np.linalg.norm(m)
    v = sum(wi * (u - (u @ m) * m) for wi, u in zip(ww, U))
    nv = np.linalg.norm(v) + eps
    r = np.cos(nv) * m + np.sin(nv) / nv * v
    return (float(norms @ ww) * r).reshape(X[0].shape)


def check_multislerp(fn: Callable[..., Tensor] | None = None) -> None:
    """3 and 4 inputs, with and without a base, normalized and raw weights; one input returned as is."""
    base, fts = _fts(4, (6, 4), seed=24)
    b, F = base.numpy(), [f.numpy() for f in fts]
    for n, w, norm in ((3, [0.2, 0.5, 1.3], True), (4, [0.1, 0.2, 0.3, 0.15], False)):
        kw = {"weight": w, "normalize_weights": norm}
        what = f"multislerp n={n} normalize_weights={norm}"
        _close(call("multislerp", None, fts[:n], fn, **kw), ref_multislerp(F[:n], w, norm), 1e-12, what)
        want = b + ref_multislerp([f - b for f in F[:n]], w, norm)
        _close(call("multislerp", base, fts[:n], fn, **kw), want, 1e-12, what + " with base")
    _close(call("multislerp", base, fts[:1], fn, weight=[3.0]), F[0], 0.0, "multislerp one input")


# ------------------------------------------------------------------------------------------ nearswap


def check_nearswap(fn: Callable[..., Tensor] | None = None) -> None:
    """w = clamp(t / max(|θ₀ − θ₁|, 1e-6), 0, 1); θ = w θ₁ + (1 − w) θ₀ (entries closer than t are swapped)."""
    base, (ft,) = _fts(1, (8, 5), seed=25)
    b, f = base.numpy(), ft.numpy()
    f[0, :2] = b[0, :2]  # identical entries
    for t in (0.0, 0.2, 0.7, 5.0):
        wgt = np.clip(t / np.maximum(np.abs(b - f), 1e-6), 0, 1)
        got = call("nearswap", base, [torch.from_numpy(f)], fn, t=t)
        _close(got, wgt * f + (1 - wgt) * b, 1e-12, f"nearswap t={t}")


# ------------------------------------------------------------------------------------------ karcher


def ref_karcher_direction(U: Sequence[np.ndarray], a: Sequence[float], iters: int = 2000) -> np.ndarray:
    """argmin_m Σ a_i arccos(⟨m, u_i⟩)² on the unit sphere, by Riemannian gradient descent to convergence."""
    a = np.asarray(a, dtype=float) / np.sum(a)
    m = sum(ai * u for ai, u in zip(a, U))
    m = m / np.linalg.norm(m)
    for _ in range(iters):
        g = np.zeros_like(m)
        for ai, u in zip(a, U):
            c = np.clip(m @ u, -1, 1)
            th = np.arccos(c)
            if th > 0:
                g += ai * th / np.sin(th) * (u - c * m)
        ng = np.linalg.norm(g)
        if ng < 1e-15:
            break
        m = np.cos(ng) * m + np.sin(ng) * g / ng
        m = m / np.linalg.norm(m)
    # first-order optimality of the reference itself: the weighted log maps cancel at m
    th = [np.arccos(np.clip(m @ u, -1, 1)) for u in U]
    resid = sum(ai * t / np.sin(t) * (u - (m @ u) * m) for ai, t, u in zip(a, th, U) if t > 0)
    assert np.linalg.norm(resid) < 1e-10, "reference Karcher mean did not converge"
    return m


def check_karcher(fn: Callable[..., Tensor] | None = None) -> None:
    """Karcher mean of the directions (widely spread, so it differs from the normalized Euclidean mean by ~1e-2)
    times the weighted mean norm; equal and unequal weights; the defaults (10 steps) on a tight cluster."""
    g = torch.Generator().manual_seed(26)
    X = [torch.randn(5, 4, generator=g, dtype=D64) * s for s in (1.0, 2.0, 0.5)]
    N = [x.numpy().ravel() for x in X]
    norms = np.array([np.linalg.norm(x) for x in N])
    U = [x / n for x, n in zip(N, norms)]
    for w in ([1.0, 1.0, 1.0], [0.5, 2.0, 1.0]):
        a = np.asarray(w) / np.sum(w)
        want = (float(norms @ a) * ref_karcher_direction(U, w)).reshape(5, 4)
        got = call("karcher", None, X, fn, weight=w, max_iter=300, tol=1e-13)
        _close(got, want, 1e-9, f"karcher weights={w}")
    # defaults: on a tight cluster the 10 steps stop once a step is shorter than tol = 1e-5 (error ≲ tol · norm)
    c = torch.randn(5, 4, generator=g, dtype=D64)
    Y = [c + 0.05 * torch.randn(5, 4, generator=g, dtype=D64) for _ in range(4)]
    M = [y.numpy().ravel() for y in Y]
    nm = np.array([np.linalg.norm(y) for y in M])
    want = (nm.mean() * ref_karcher_direction([y / n for y, n in zip(M, nm)], [1.0] * 4)).reshape(5, 4)
    _close(call("karcher", None, Y, fn), want, 1e-5, "karcher defaults")


# ------------------------------------------------------------------------------------------ passthrough


def check_passthrough(fn: Callable[..., Tensor] | None = None) -> None:
    """The one input unchanged, or scale · input."""
    _, (x,) = _fts(1, (4, 3), seed=27)
    _close(call("passthrough", None, [x], fn), x.numpy(), 0.0, "passthrough")
    _close(call("passthrough", None, [x], fn, scale=0.25), 0.25 * x.numpy(), 0.0, "passthrough scale")
    _close(call("passthrough", None, [x], fn, scale=[-2.0]), -2.0 * x.numpy(), 0.0, "passthrough scale list")


CLOSED_FORM: dict[str, Callable[..., None]] = {
    "linear": check_linear,
    "slerp": check_slerp,
    "nuslerp": check_nuslerp,
    "multislerp": check_multislerp,
    "nearswap": check_nearswap,
    "karcher": check_karcher,
    "passthrough": check_passthrough,
}

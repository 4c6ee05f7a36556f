"""OrthoMerge: Lie-algebra merging of rotations and orthogonal-residual decoupling, vs float64 closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from orthokit.merge.orthomerge import (
    exp_so,
    karcher_mean_so,
    lie_combine,
    log_so,
    orthomerge,
    orthomerge_oft,
    procrustes_so,
    residual_combine,
)
from orthokit.merge.registry import MERGE_METHODS, method_schema

from .conformance import check_orthomerge, check_orthomerge_oft, ref_orthomerge

D64 = torch.float64


def rand_skew(n: int, scale: float = 1.0, batch: tuple[int, ...] = (), gen: torch.Generator | None = None):
    A = torch.randn(*batch, n, n, dtype=D64, generator=gen)
    return scale * (A - A.transpose(-1, -2)) / 2


def rand_rot(n: int, scale: float = 0.5, batch: tuple[int, ...] = (), gen: torch.Generator | None = None):
    return torch.linalg.matrix_exp(rand_skew(n, scale, batch, gen))


def scipy_logm(Q: torch.Tensor) -> torch.Tensor:
    """Principal log via SciPy's complex Schur form (Q is normal ⇒ T diagonal); ``sla.logm``'s general
    inverse-scaling-and-squaring gives the same to ~1e-13 but costs ~50 ms a call on the 2-core box."""
    T, Z = sla.schur(Q.numpy().astype(complex), output="complex")
    return torch.tensor(np.real(Z @ np.diag(np.log(np.diag(T))) @ Z.conj().T), dtype=D64)


def planar(n: int, angles: list[float], P: torch.Tensor) -> torch.Tensor:
    """Skew matrix with the given rotation angles in consecutive planes of basis P."""
    B = torch.zeros(n, n, dtype=D64)
    for i, a in enumerate(angles):
        B[2 * i + 1, 2 * i], B[2 * i, 2 * i + 1] = a, -a
    return P @ B @ P.T


# ---------------------------------------------------------------- log / exp / procrustes primitives
@settings(deadline=None)
@given(st.integers(2, 9), st.floats(0.01, 1.2), st.integers(0, 10_000))
def test_log_so_matches_scipy_and_roundtrips(n: int, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    Q = rand_rot(n, scale, gen=g)
    L = log_so(Q)
    assert torch.allclose(L, -L.T, atol=1e-14)
    assert torch.allclose(torch.linalg.matrix_exp(L), Q, atol=1e-12)
    if torch.linalg.matrix_norm(L, ord=2) < math.pi - 1e-3:
        assert torch.allclose(L, scipy_logm(Q), atol=1e-10)


@pytest.mark.parametrize("gap", [1e-2, 1e-5, 1e-8, 0.0])
def test_log_so_near_and_at_pi(gap: float) -> None:
    n = 6
    P, _ = torch.linalg.qr(torch.randn(n, n, dtype=D64))
    A = planar(n, [math.pi - gap, 0.7], P)
    Q = torch.linalg.matrix_exp(A)
    L = log_so(Q)
    assert torch.allclose(torch.linalg.matrix_exp(L), Q, atol=1e-10)
    assert float(torch.linalg.matrix_norm(L, ord=2)) <= math.pi + 1e-9
    if gap > 0:  # unique principal log: must be the one we built
        assert torch.allclose(L, A, atol=1e-8)


def test_log_so_rejects_reflection() -> None:
    R = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=D64))
    with pytest.raises(ValueError, match="det = -1"):
        log_so(R)


def test_procrustes_so_is_best_rotation_and_fixes_reflections() -> None:
    W0 = torch.randn(10, 4, dtype=D64)
    R_true = rand_rot(4, 0.4)
    W = W0 @ R_true + 1e-3 * torch.randn(10, 4, dtype=D64)
    R = procrustes_so(W0.T @ W)
    assert torch.allclose(R.T @ R, torch.eye(4, dtype=D64), atol=1e-12)
    assert torch.allclose(R, R_true, atol=1e-2)
    best = torch.linalg.matrix_norm(W0 @ R - W)
    for _ in range(20):  # no random nearby rotation does better
        Rp = R @ rand_rot(4, 0.05)
        assert torch.linalg.matrix_norm(W0 @ Rp - W) >= best - 1e-12
    # unconstrained Procrustes would return a reflection here; we must return det +1
    F = torch.diag(torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=D64))
    Rr = procrustes_so(W0.T @ (W0 @ F))
    assert float(torch.linalg.det(Rr)) == pytest.approx(1.0, abs=1e-12)


def test_lie_combine_magnitude_correction() -> None:
    A1, A2 = rand_skew(5), rand_skew(5)
    A2 = A2 * (2.0 / A2.norm())
    A1 = A1 * (1.0 / A1.norm())
    M = lie_combine([A1, A2], [1.0, 1.0])
    assert float(M.norm()) == pytest.approx(1.5, rel=1e-12)  # mean magnitude
    s = A1 + A2
    assert torch.allclose(M / M.norm(), s / s.norm(), atol=1e-14)  # direction of the sum
    assert torch.allclose(lie_combine([A1, A2], [1.0, 3.0], False), (A1 + 3 * A2) / 4, atol=1e-15)


# ---------------------------------------------------------------- orthomerge_oft
def test_oft_stays_orthogonal_det_plus_one_and_returns_dtype() -> None:
    Rs = [rand_rot(8, 0.8, batch=(3,)).float() for _ in range(4)]
    R = orthomerge_oft(None, Rs)
    assert R.dtype == torch.float32 and R.shape == (3, 8, 8)
    R64 = R.double()
    assert (R64.transpose(-1, -2) @ R64 - torch.eye(8, dtype=D64)).abs().max() < 1e-6
    assert torch.all(torch.linalg.det(R64) > 0)


def test_oft_geodesic_midpoint_vs_closed_form() -> None:
    Q1, Q2 = rand_rot(6, 0.7), rand_rot(6, 0.7)
    ref = Q1 @ torch.linalg.matrix_exp(0.5 * scipy_logm(Q1.T @ Q2))
    got = orthomerge_oft(None, [Q1, Q2], mean="karcher", magnitude_correction=False)
    assert (got - ref).abs().max() < 1e-10
    # the paper's tangent-space rule equals the midpoint for commuting inputs (same rotation planes)
    P, _ = torch.linalg.qr(torch.randn(6, 6, dtype=D64))
    C1 = torch.linalg.matrix_exp(planar(6, [0.3, 0.5, 0.2], P))
    C2 = torch.linalg.matrix_exp(planar(6, [0.9, 0.1, 0.6], P))
    ref_c = C1 @ torch.linalg.matrix_exp(0.5 * scipy_logm(C1.T @ C2))
    assert (orthomerge_oft(None, [C1, C2], magnitude_correction=False) - ref_c).abs().max() < 1e-12
    # with magnitude correction it is the midpoint only for parallel Lie elements (|A1 + A2| = |A1| + |A2|) ...
    C3 = torch.linalg.matrix_exp(planar(6, [0.9, 1.5, 0.6], P))
    ref_p = C1 @ torch.linalg.matrix_exp(0.5 * scipy_logm(C1.T @ C3))
    assert (orthomerge_oft(None, [C1, C3]) - ref_p).abs().max() < 1e-12
    # ... otherwise it keeps the mean rotation magnitude, i.e. rotates further than the midpoint
    got = orthomerge_oft(None, [C1, C2])
    A1, A2 = scipy_logm(C1), scipy_logm(C2)
    assert float(scipy_logm(got).norm()) == pytest.approx(float(A1.norm() + A2.norm()) / 2, rel=1e-10)
    assert float(scipy_logm(got).norm()) > float(scipy_logm(ref_c).norm()) + 1e-3


def test_oft_paper_formula_and_base_tangent_point() -> None:
    Rs = [rand_rot(5, 0.6) for _ in range(3)]
    w = [1.0, 2.0, 0.5]
    As = [scipy_logm(R) for R in Rs]
    s = sum(wi * a for wi, a in zip(w, As))
    mag = sum(wi * a.norm() for wi, a in zip(w, As)) / sum(w)
    ref = torch.linalg.matrix_exp(0.7 * mag * s / s.norm())
    got = orthomerge_oft(None, Rs, weights=w, lambda_=0.7)
    assert (got - ref).abs().max() < 1e-10
    # with base = R_1 and two inputs [R_1, R_2]: zero + log(R_1ᵀR_2) ⇒ the geodesic midpoint
    ref_mid = Rs[0] @ torch.linalg.matrix_exp(0.5 * scipy_logm(Rs[0].T @ Rs[1]))
    assert (orthomerge_oft(Rs[0], [Rs[0], Rs[1]]) - ref_mid).abs().max() < 1e-10


def test_oft_one_and_identical_and_order() -> None:
    Rs = [rand_rot(6, 0.9) for _ in range(4)]
    for mean in ("lie", "karcher"):
        assert (orthomerge_oft(None, [Rs[0]], mean=mean) - Rs[0]).abs().max() < 1e-12
        assert (orthomerge_oft(None, [Rs[1]] * 3, mean=mean) - Rs[1]).abs().max() < 1e-12
        a = orthomerge_oft(None, Rs, weights=[1, 2, 3, 4], mean=mean)
        b = orthomerge_oft(None, Rs[::-1], weights=[4, 3, 2, 1], mean=mean)
        assert (a - b).abs().max() < 1e-12


def test_oft_near_pi_inputs_are_handled() -> None:
    """Angles at/near π: Cayley⁻¹ ((R + I)⁻¹ is singular) would blow up; exp/log stays finite and orthogonal."""
    n = 4
    P, _ = torch.linalg.qr(torch.randn(n, n, dtype=D64))
    R1 = torch.linalg.matrix_exp(planar(n, [math.pi - 1e-9, 0.2], P))
    R2 = torch.linalg.matrix_exp(planar(n, [math.pi - 1e-9, 0.4], P))
    assert torch.linalg.cond(R1 + torch.eye(n, dtype=D64)) > 1e8  # what Cayley⁻¹ would have to invert
    R = orthomerge_oft(None, [R1, R2])
    assert torch.isfinite(R).all()
    assert (R.T @ R - torch.eye(n, dtype=D64)).abs().max() < 1e-12
    ref = torch.linalg.matrix_exp(planar(n, [math.pi - 1e-9, 0.3], P))
    assert (orthomerge_oft(None, [R1, R2], magnitude_correction=False) - ref).abs().max() < 1e-7


def test_oft_rejects_bad_inputs() -> None:
    R = rand_rot(4)
    refl = R @ torch.diag(torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=D64))
    with pytest.raises(ValueError, match="reflection"):
        orthomerge_oft(None, [R, refl])
    with pytest.raises(ValueError, match="not orthogonal"):
        orthomerge_oft(None, [R, R + 0.1])
    with pytest.raises(ValueError, match="square"):
        orthomerge_oft(None, [torch.randn(3, 4, dtype=D64)])
    with pytest.raises(ValueError, match="shape mismatch"):
        orthomerge_oft(None, [R, rand_rot(5)])
    with pytest.raises(TypeError, match="dtype mismatch"):
        orthomerge_oft(None, [R, R.float()])
    with pytest.raises(ValueError, match="non-negative"):
        orthomerge_oft(None, [R, R], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="mean"):
        orthomerge_oft(None, [R], mean="bogus")  # type: ignore[arg-type]


# ---------------------------------------------------------------- orthomerge (full fine-tunes)
@pytest.mark.parametrize("shape", [(12, 7), (7, 12), (9, 9)])
@pytest.mark.parametrize("side", ["auto", "right", "left"])
def test_full_one_and_identical_models(shape: tuple[int, int], side: str) -> None:
    W0 = torch.randn(*shape, dtype=D64)
    W1 = W0 + 0.3 * torch.randn(*shape, dtype=D64)
    assert (orthomerge(W0, [W1], side=side) - W1).abs().max() < 1e-10
    assert (orthomerge(W0, [W1, W1, W1], side=side) - W1).abs().max() < 1e-10


def test_full_pure_rotations_recover_manifold_merge() -> None:
    """W_t = W_0 R_t exactly ⇒ residuals vanish and the result is W_0 · exp(lie_combine(log R_t))."""
    W0 = torch.randn(10, 6, dtype=D64)
    Rs = [rand_rot(6, 0.5) for _ in range(3)]
    out = orthomerge(W0, [W0 @ R for R in Rs], side="right")
    ref = W0 @ torch.linalg.matrix_exp(lie_combine([scipy_logm(R) for R in Rs], [1, 1, 1]))
    assert (out - ref).abs().max() < 1e-9
    # task arithmetic would shrink the rotation: the merged row norms must be preserved instead
    assert torch.allclose(out.norm(dim=1), W0.norm(dim=1), atol=1e-9)


def test_full_reflection_finetune_is_handled() -> None:
    """A fine-tune that is exactly a reflection of the base: Procrustes must not return det −1 (Cayley⁻¹
    would divide by the singular R + I); the result is finite and merging it alone returns it."""
    W0 = torch.randn(8, 5, dtype=D64)
    F = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0], dtype=D64))
    W1 = W0 @ F
    out = orthomerge(W0, [W1, W0 + 0.1 * torch.randn(8, 5, dtype=D64)], side="right")
    assert torch.isfinite(out).all()
    assert (orthomerge(W0, [W1], side="right") - W1).abs().max() < 1e-10


def test_full_residual_modes_and_1d() -> None:
    W0 = torch.randn(6, dtype=D64)
    Ws = [W0 + torch.randn(6, dtype=D64) for _ in range(3)]
    d = [W - W0 for W in Ws]
    assert torch.allclose(orthomerge(W0, Ws, residual_merge="sum", residual_lambda=0.3), W0 + 0.3 * sum(d))
    assert torch.allclose(orthomerge(W0, Ws), W0 + sum(d) / 3)
    # TIES at density 1 with sign-agreeing deltas = their mean
    pos = [W0 + torch.rand(6, dtype=D64) for _ in range(3)]
    assert torch.allclose(orthomerge(W0, pos, residual_merge="ties", density=1.0), sum(pos) / 3)
    t = residual_combine([torch.tensor([3.0, -1.0]), torch.tensor([-1.0, -2.0])], [1.0, 1.0], "ties", 1.0)
    assert t.tolist() == [3.0, -1.5]


def test_full_order_invariance_and_dtype() -> None:
    W0 = torch.randn(16, 8)
    Ws = [W0 + 0.2 * torch.randn(16, 8) for _ in range(4)]
    w = [0.5, 1.0, 2.0, 1.5]
    a = orthomerge(W0, Ws, weights=w)
    b = orthomerge(W0, Ws[::-1], weights=w[::-1])
    assert a.dtype == torch.float32 and (a - b).abs().max() < 1e-6
    conv = torch.randn(4, 3, 2, 2, dtype=D64)
    fts = [conv + 0.1 * torch.randn_like(conv) for _ in range(2)]
    want = ref_orthomerge(conv.numpy(), [f.numpy() for f in fts], [1.0, 1.0], 1.0, 1.0, "mean", "auto")
    assert (
        np.abs(orthomerge(conv, fts).numpy() - want).max() < 1e-10
    )  # flattened to [4, 12], rotated on the left


def test_full_matches_float64_rederivation() -> None:
    """Tall, wide, square (left) and 4-D weights, mean and sum residuals, vs scipy Kabsch/Schur-log/expm."""
    check_orthomerge()
    check_orthomerge_oft()


def test_full_rejects_bad_inputs() -> None:
    W0 = torch.randn(4, 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        orthomerge(W0, [torch.randn(3, 4)])
    with pytest.raises(TypeError, match="dtype mismatch"):
        orthomerge(W0, [W0.double()])
    with pytest.raises(ValueError, match="needs a base"):
        orthomerge(None, [W0])
    with pytest.raises(ValueError, match="NaN"):
        orthomerge(W0, [W0 * float("nan")])
    with pytest.raises(ValueError, match="side"):
        orthomerge(W0, [W0], side="up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="residual_merge"):
        orthomerge(W0, [W0], residual_merge="max")  # type: ignore[arg-type]
    before = W0.clone()
    with pytest.raises(ValueError):
        orthomerge(W0, [W0, W0], weights=[1.0])
    assert torch.equal(W0, before)


def test_registered_with_schema() -> None:
    assert MERGE_METHODS.capabilities("orthomerge")["inputs"] == "full"
    assert MERGE_METHODS.capabilities("orthomerge_oft")["inputs"] == "orthogonal"
    names = [p.config_name for p in method_schema("orthomerge").params]
    assert {"weight", "lambda", "residual_lambda", "residual_merge", "side"} <= set(names)


def test_karcher_mean_is_stationary() -> None:
    Rs = [rand_rot(5, 0.5) for _ in range(4)]
    w = [1.0, 2.0, 1.0, 0.5]
    X = karcher_mean_so(Rs, w)
    grad = sum(wi * log_so(X.T @ R) for wi, R in zip(w, Rs))
    assert float(grad.norm()) < 1e-10
    assert torch.allclose(exp_so(log_so(X)), X, atol=1e-12)


def test_log_so_agrees_with_shared_linalg_primitive() -> None:
    """log_so is linalg.logm_orthogonal(method="eigh"); cross-check it against the real-Schur ("eig") route."""
    from orthokit.linalg import logm_orthogonal

    Q = rand_rot(16, 0.5, batch=(7,))
    assert (log_so(Q) - logm_orthogonal(Q)).abs().max() < 1e-12
    P, _ = torch.linalg.qr(torch.randn(6, 6, dtype=D64))
    Qp = torch.linalg.matrix_exp(planar(6, [math.pi - 1e-6, 0.3, 1.0], P))
    assert (log_so(Qp) - logm_orthogonal(Qp)).abs().max() < 1e-9

"""Tests for orthokit.linalg.subspace: Subspace (GPM energy criterion) and principal_angles."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from orthokit.linalg import Subspace, principal_angles

D = torch.float64


def _orthonormal(n: int, k: int, dtype: torch.dtype = D) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, dtype=torch.float64)).Q.to(dtype)


def _reference_gpm_rank(captured: float, sig: torch.Tensor, total: float, eps: float) -> int:
    """Reference loop straight from GPM's update (acc += σ̂²/‖R‖² while acc < ε), in float64."""
    acc = captured / total
    r = 0
    for s in sig.tolist():
        if acc >= eps:
            break
        acc += s * s / total
        r += 1
    return r


# ---------------------------------------------------------------- construction / validation
def test_construct_and_properties() -> None:
    B = _orthonormal(10, 3)
    S = Subspace(B, torch.tensor([3.0, 2.0, 1.0], dtype=D))
    assert (S.dim, S.ambient_dim, S.free_dim) == (3, 10, 7)
    assert S.dtype == D and S.basis is B
    assert "dim=3" in repr(S) and "ambient_dim=10" in repr(S)


def test_rejects_non_orthonormal_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="not orthonormal"):
        Subspace(torch.randn(10, 3, dtype=D))
    with pytest.raises(ValueError, match="2-D"):
        Subspace(torch.randn(10, dtype=D))
    with pytest.raises(ValueError, match="columns > ambient"):
        Subspace(torch.randn(3, 5, dtype=D))
    bad = _orthonormal(6, 2).clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        Subspace(bad)
    with pytest.raises(ValueError, match="scales must have shape"):
        Subspace(_orthonormal(6, 2), torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match="non-negative"):
        Subspace(_orthonormal(6, 2), torch.tensor([1.0, -1.0], dtype=D))
    with pytest.raises(TypeError):
        Subspace([[1.0]])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive int"):
        Subspace.empty(0)


def test_float32_basis_tolerance_accepts_qr_output() -> None:
    B = torch.linalg.qr(torch.randn(512, 64)).Q  # float32 QR, orthonormal to ~1e-6
    assert Subspace(B).dim == 64


# ---------------------------------------------------------------- projections
def test_project_matches_dense_projector_float64() -> None:
    B = _orthonormal(12, 4)
    S = Subspace(B)
    x = torch.randn(3, 5, 12, dtype=D)
    P = B @ B.T
    torch.testing.assert_close(S.project(x), x @ P)
    torch.testing.assert_close(S.complement_project(x), x - x @ P)
    torch.testing.assert_close(S.projector(), P)
    # idempotent, orthogonal decomposition
    torch.testing.assert_close(S.project(S.project(x)), S.project(x))
    assert S.complement_project(x).matmul(B).abs().max() < 1e-12


def test_scaled_projection_sgp() -> None:
    B = _orthonormal(9, 3)
    lam = torch.tensor([1.0, 0.5, 0.1], dtype=D)
    S = Subspace(B)
    x = torch.randn(4, 9, dtype=D)
    ref = x @ (torch.eye(9, dtype=D) - B @ torch.diag(lam) @ B.T)
    torch.testing.assert_close(S.complement_project(x, weights=lam), ref)
    torch.testing.assert_close(S.projector(lam), B @ torch.diag(lam) @ B.T)
    with pytest.raises(ValueError, match="weights"):
        S.project(x, weights=torch.ones(2, dtype=D))


def test_empty_subspace_projections() -> None:
    S = Subspace.empty(7, dtype=D)
    x = torch.randn(2, 7, dtype=D)
    assert S.dim == 0 and S.free_dim == 7
    assert torch.equal(S.project(x), torch.zeros_like(x))
    assert torch.equal(S.complement_project(x), x)
    assert torch.equal(S.projector(), torch.zeros(7, 7, dtype=D))


def test_project_dtype_and_shape_errors() -> None:
    S = Subspace(_orthonormal(8, 2, torch.float32))
    xb = torch.randn(3, 8).to(torch.bfloat16)
    out = S.complement_project(xb)
    assert out.dtype == torch.bfloat16
    ref = xb.double() - xb.double() @ S.basis.double() @ S.basis.double().T
    assert (out.double() - ref).abs().max() < 0.05
    with pytest.raises(ValueError, match="last dimension"):
        S.project(torch.randn(3, 9))
    with pytest.raises(ValueError, match="floating"):
        S.project(torch.ones(3, 8, dtype=torch.int64))


def test_project_autograd() -> None:
    S = Subspace(_orthonormal(6, 2))
    x = torch.randn(3, 6, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: S.complement_project(t), (x,))


# ---------------------------------------------------------------- GPM energy criterion
def test_from_matrix_energy_criterion_exact() -> None:
    # R with a known spectrum
    U = _orthonormal(20, 6)
    V = _orthonormal(30, 6)
    sig = torch.tensor([10.0, 5.0, 3.0, 1.0, 0.5, 0.1], dtype=D)
    R = U @ torch.diag(sig) @ V.T
    total = float((sig**2).sum())
    for eps in [0.0, 0.5, 0.75, 0.9, 0.97, 0.99, 0.999, 1.0]:
        S = Subspace.from_matrix(R, energy_threshold=eps)
        r_ref = _reference_gpm_rank(0.0, sig, total, eps)
        assert S.dim == r_ref, (eps, S.dim, r_ref)
        # the kept directions are the top singular vectors, scales are the singular values
        if r_ref:
            assert principal_angles(S.basis, U[:, :r_ref]).max() < 1e-7
            torch.testing.assert_close(S.scales, sig[:r_ref])
    assert Subspace.from_matrix(R).dim == 6  # span of R
    assert Subspace.from_matrix(R, rank=2).dim == 2
    assert Subspace.from_matrix(R, energy_threshold=0.999, rank=3).dim == 3


def test_extend_matches_reference_gpm_update() -> None:
    n = 16
    R1 = torch.randn(n, 4, dtype=D) @ torch.randn(4, 30, dtype=D)
    S = Subspace.from_matrix(R1, energy_threshold=0.95)
    R2 = torch.randn(n, 40, dtype=D) * torch.linspace(3.0, 0.1, n, dtype=D)[:, None]
    for eps in [0.5, 0.9, 0.97, 0.99]:
        S2 = S.extend(R2, eps)
        # float64 reference computed from scratch
        B = S.basis
        total = float((R2**2).sum())
        resid = R2 - B @ (B.T @ R2)
        captured = total - float((resid**2).sum())
        Uh, sh, _ = torch.linalg.svd(resid, full_matrices=False)
        r_ref = min(_reference_gpm_rank(captured, sh, total, eps), n - S.dim)
        assert S2.dim == S.dim + r_ref
        # old columns kept exactly, new ones span the top residual directions
        assert torch.equal(S2.basis[:, : S.dim], S.basis)
        if r_ref:
            assert principal_angles(S2.basis[:, S.dim :], Uh[:, :r_ref]).max() < 1e-6
            torch.testing.assert_close(S2.scales[S.dim :], sh[:r_ref])
        eye = torch.eye(S2.dim, dtype=D)
        assert (S2.basis.T @ S2.basis - eye).abs().max() < 1e-12
        # captured energy reaches the threshold
        cap = float((S2.coordinates(R2.T) ** 2).sum())
        assert cap >= eps * total * (1 - 1e-12)
    assert S.dim == Subspace.from_matrix(R1, energy_threshold=0.95).dim  # original unchanged


def test_extend_zero_energy_and_full_space() -> None:
    S = Subspace.from_matrix(torch.randn(5, 3, dtype=D))
    assert S.extend(torch.zeros(5, 4, dtype=D), 0.99).dim == 3
    # R inside the subspace: no new directions (residual is rounding noise)
    inside = S.basis @ torch.randn(3, 10, dtype=D)
    assert S.extend(inside, 1.0).dim == 3
    full = S.extend(torch.randn(5, 50, dtype=D), 1.0)
    assert full.dim == 5 and full.free_dim == 0
    assert full.extend(torch.randn(5, 3, dtype=D), 1.0).dim == 5  # never exceeds n
    assert full.complement().dim == 0


def test_extend_validation() -> None:
    S = Subspace.empty(5, dtype=D)
    with pytest.raises(ValueError, match="rows"):
        S.extend(torch.randn(4, 3, dtype=D), 0.9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        S.extend(torch.randn(5, 3, dtype=D), 1.5)
    with pytest.raises(TypeError):
        S.extend(torch.randn(5, 3, dtype=D), "0.9")  # type: ignore[arg-type]
    R = torch.randn(5, 3, dtype=D)
    R[1, 1] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        S.extend(R, 0.9)
    with pytest.raises(ValueError, match="2-D"):
        S.extend(torch.randn(2, 5, 3, dtype=D), 0.9)


def test_extend_without_scales_and_ill_conditioned_float32() -> None:
    S = Subspace(_orthonormal(30, 5, torch.float32))  # no scales
    # ill-conditioned samples: nearly inside the subspace plus a tiny new direction
    R = S.basis @ torch.randn(5, 40) + 1e-3 * torch.randn(30, 1) * torch.randn(1, 40)
    S2 = S.extend(R, 0.9999999)
    assert S2.scales is None and S2.dim >= 6
    err = (S2.basis.T @ S2.basis - torch.eye(S2.dim)).abs().max()
    assert err < 1e-5
    assert torch.isfinite(S2.basis).all()


@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 24),
    s=st.integers(1, 30),
    k=st.integers(0, 6),
    eps=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_extend_properties(seed: int, n: int, s: int, k: int, eps: float, dtype: torch.dtype) -> None:
    torch.manual_seed(seed)
    k = min(k, n)
    S = Subspace(_orthonormal(n, k, dtype)) if k else Subspace.empty(n, dtype=dtype)
    R = (torch.randn(n, s, dtype=torch.float64) * torch.logspace(0, -4, s, dtype=torch.float64)).to(dtype)
    S2 = S.extend(R, eps)
    assert S.dim <= S2.dim <= n
    assert S2.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    if S2.dim:
        assert (S2.basis.T @ S2.basis - torch.eye(S2.dim, dtype=dtype)).abs().max() <= tol
    Rd = R.double()
    total = float((Rd**2).sum())
    cap = float(((S2.basis.double().T @ Rd) ** 2).sum())
    assert cap >= eps * total * (1 - 1e-4) - 1e-12 or S2.dim == n


# ---------------------------------------------------------------- misc API
def test_state_dict_roundtrip_and_to() -> None:
    S = Subspace.from_matrix(torch.randn(8, 20, dtype=D), energy_threshold=0.8)
    d = S.state_dict()
    S2 = Subspace.from_state_dict(d)
    assert torch.equal(S2.basis, S.basis) and torch.equal(S2.scales, S.scales)
    d["basis"].zero_()  # state_dict is a copy
    assert S.basis.abs().sum() > 0
    with pytest.raises(ValueError, match="basis"):
        Subspace.from_state_dict({"scales": torch.ones(1)})
    with pytest.raises(ValueError, match="unexpected"):
        Subspace.from_state_dict({"basis": S.basis, "junk": S.basis})
    S32 = S.to(torch.float32)
    assert S32.dtype == torch.float32 and S32.scales.dtype == torch.float32 and S.dtype == D
    E = Subspace.from_state_dict(Subspace.empty(4).state_dict())
    assert E.dim == 0 and E.ambient_dim == 4


def test_complement() -> None:
    S = Subspace(_orthonormal(7, 3))
    C = S.complement()
    assert C.dim == 4
    assert (S.basis.T @ C.basis).abs().max() < 1e-12
    torch.testing.assert_close(S.projector() + C.projector(), torch.eye(7, dtype=D))
    assert Subspace.empty(3, dtype=D).complement().dim == 3


# ---------------------------------------------------------------- principal angles
def _angles_reference(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    qu = torch.linalg.qr(U.double()).Q
    qv = torch.linalg.qr(V.double()).Q
    c = torch.linalg.svdvals(qu.T @ qv).clamp(-1, 1)
    return torch.arccos(c)


def test_principal_angles_known_values() -> None:
    e = torch.eye(4, dtype=D)
    angles = torch.tensor([0.3, 1.2], dtype=D)
    U = e[:, :2]
    V = torch.stack(
        [
            torch.cos(angles[0]) * e[0] + torch.sin(angles[0]) * e[2],
            torch.cos(angles[1]) * e[1] + torch.sin(angles[1]) * e[3],
        ],
        dim=1,
    )
    V = V @ torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=D)  # non-orthonormal basis of the same span
    torch.testing.assert_close(principal_angles(U, V), angles)
    torch.testing.assert_close(principal_angles(V, U), angles)
    # orthogonal spaces, identical spaces
    torch.testing.assert_close(principal_angles(e[:, :2], e[:, 2:]), torch.full((2,), math.pi / 2, dtype=D))
    assert principal_angles(U, U @ torch.randn(2, 2, dtype=D)).abs().max() < 1e-7


@pytest.mark.parametrize("t", [1e-12, 1e-9, 1e-6, 1e-3])
def test_principal_angles_small_angles_accurate(t: float) -> None:
    # arccos would return 0 (or ~1e-8) here; the sine formula gets the relative accuracy
    e = torch.eye(5, dtype=D)
    tt = torch.tensor(t, dtype=D)
    V = torch.stack([torch.cos(tt) * e[0] + torch.sin(tt) * e[3], e[1]], dim=1)
    th = principal_angles(e[:, :3], V)
    assert th.shape == (2,)
    assert abs(float(th[0])) < 1e-15
    assert abs(float(th[1]) - t) <= 1e-6 * t


def test_principal_angles_batched_and_vs_reference() -> None:
    U = torch.randn(3, 10, 4, dtype=D)
    V = torch.randn(3, 10, 6, dtype=D)
    th = principal_angles(U, V)
    assert th.shape == (3, 4)
    for i in range(3):
        torch.testing.assert_close(th[i], _angles_reference(U[i], V[i]), atol=1e-7, rtol=0)
    assert (th[..., 1:] >= th[..., :-1]).all()
    th32 = principal_angles(U.float(), V.float())
    assert th32.dtype == torch.float32
    assert (th32.double() - th).abs().max() < 1e-4


def test_principal_angles_errors_and_grad() -> None:
    with pytest.raises(ValueError, match="same number of rows"):
        principal_angles(torch.randn(4, 2), torch.randn(5, 2))
    bad = torch.randn(4, 2)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        principal_angles(bad, torch.randn(4, 2))
    U = torch.randn(6, 2, dtype=D, requires_grad=True)
    V = torch.randn(6, 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(principal_angles, (U, V))


def test_subspace_principal_angles_method() -> None:
    S = Subspace(_orthonormal(6, 2))
    T = Subspace(_orthonormal(6, 3))
    torch.testing.assert_close(S.principal_angles(T), _angles_reference(S.basis, T.basis), atol=1e-7, rtol=0)
    assert S.principal_angles(Subspace.empty(6, dtype=D)).numel() == 0

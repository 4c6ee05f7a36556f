"""Review fixes for the alignment maps: wide sources refused, overflow-sized inputs and outputs refused with a
one-line error, and ``Aligner.load`` checking a file's map against its declared kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy.optimize import minimize

from orthokit.align._aligner import Aligner
from orthokit.align.api import fit

F64 = torch.float64
CONSTRAINED = ("orthogonal", "orthogonal_scaled", "lambda_orthogonal")


def _kw(method: str) -> dict[str, float]:
    return {"lam": 0.05} if method == "lambda_orthogonal" else {}


@pytest.mark.parametrize("method", CONSTRAINED)
def test_wide_source_is_refused_with_a_one_line_hint(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 3, generator=g, dtype=F64)
    with pytest.raises(ValueError, match=r"d_s=3 > d_t=1.*affine.*d_t=1 features.*PCA") as info:
        fit(X, X[:, :1], method, **_kw(method))
    assert "\n" not in str(info.value) and method in str(info.value)


def test_why_wide_is_refused_procrustes_is_not_least_squares_there() -> None:
    """The review's case: the best unit-norm column (scipy SLSQP) beats U Vᵀ by orders of magnitude, while
    ``affine`` (which is accepted) is at least as good as any constrained map."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 3, generator=g, dtype=F64) * torch.tensor([10.0, 1.0, 0.1], dtype=F64)
    Y = X @ torch.tensor([[0.3], [1.0], [0.0]], dtype=F64) + 0.1 * torch.randn(200, 1, generator=g, dtype=F64)
    Xc, Yc = (X - X.mean(0)).numpy(), (Y - Y.mean(0)).numpy()
    U, _, Vt = np.linalg.svd(Xc.T @ Yc, full_matrices=False)
    sse = lambda w: float(((Xc @ w.reshape(3, 1) - Yc) ** 2).sum())  # noqa: E731
    res = minimize(
        sse,
        (U @ Vt).ravel(),
        constraints=[{"type": "eq", "fun": lambda w: w @ w - 1}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert sse((U @ Vt).ravel()) > 100 * res.fun  # max-trace is far from the constrained optimum
    a = fit(X, Y, "affine")
    assert sse(a.W.numpy().ravel()) <= res.fun + 1e-9


@pytest.mark.parametrize("method", (*CONSTRAINED, "affine"))
def test_overflow_sized_inputs_are_refused_naming_the_argument(method: str) -> None:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 3, generator=g, dtype=F64)
    for src, tgt, name in ((X * 1e160, X, "source"), (X, X * 1e160, "target")):
        with pytest.raises(ValueError, match=f"^{name} has values up to .*overflow") as info:
            fit(src, tgt, method, **_kw(method))
        assert "\n" not in str(info.value)
    # float32 computation: the limit is ~1e19/√(nd)
    with pytest.raises(ValueError, match="source has values up to .*float32"):
        fit(X * 1e18, X, method, dtype=torch.float32, **_kw(method))


def test_large_but_safe_inputs_give_the_same_map_as_unit_scale() -> None:
    """1e140 in float64 is below the limit: the rotation, Umeyama scale and residual are scale-invariant."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(100, 4, generator=g, dtype=F64)
    Q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))[0]
    Y = 0.5 * X @ Q + 0.01 * torch.randn(100, 4, generator=g, dtype=F64)
    c = 1e140
    for method in ("orthogonal", "orthogonal_scaled"):
        small, big = fit(X, Y, method), fit(c * X, c * Y, method)
        assert float((small.W - big.W).abs().max()) < 1e-10
        assert big.scale == pytest.approx(small.scale, rel=1e-12)
        r_small, r_big = small.residuals(X, Y)["relative"], big.residuals(c * X, c * Y)["relative"]
        assert r_big == pytest.approx(r_small, rel=1e-9) and r_big > 0
    with pytest.raises(ValueError, match="X has values up to"):
        small.residuals(X * 1e160, Y)


def test_transform_refuses_a_non_finite_result() -> None:
    a = Aligner(
        torch.eye(2, dtype=F64), torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64), 1e30, kind="similarity"
    )
    x = torch.tensor([[1e10, 0.0]])
    with pytest.raises(
        ValueError, match=r"^transform: the result has 1 non-finite value\(s\) in torch.float32"
    ):
        a.transform(x)  # 1e40 overflows float32
    assert float(a.transform(x.double())[0, 0]) == pytest.approx(1e40)
    b = Aligner(
        torch.eye(2, dtype=F64),
        torch.zeros(2, dtype=F64),
        torch.zeros(2, dtype=F64),
        1e-30,
        kind="similarity",
    )
    with pytest.raises(ValueError, match="^inverse_transform: the result has"):
        b.inverse_transform(x)


# ------------------------------------------------------------------------------------------- load checks
def _write(path: Path, W: torch.Tensor, kind: str, lam: str = "", scale: float = 1.0) -> Path:
    d_s, d_t = W.shape
    t = {
        "W": W.contiguous(),
        "mean_source": torch.zeros(d_s, dtype=W.dtype),
        "mean_target": torch.zeros(d_t, dtype=W.dtype),
        "scale": torch.tensor(scale, dtype=W.dtype),
    }
    save_file(t, str(path), metadata={"format": "orthokit.align.Aligner/1", "kind": kind, "lam": lam})
    return path


def test_load_checks_the_map_against_its_declared_kind(tmp_path: Path) -> None:
    two = 2 * torch.eye(3, dtype=F64)
    for kind in ("isometry", "similarity"):
        with pytest.raises(ValueError, match=f"invalid aligner: kind '{kind}' needs W with orthonormal rows"):
            Aligner.load(_write(tmp_path / "a.safetensors", two, kind))
    with pytest.raises(ValueError, match=r"needs ‖G − I‖_F <= lam = 0.5, got 5.19615"):
        Aligner.load(_write(tmp_path / "b.safetensors", two, "near_isometry", "0.5"))
    with pytest.raises(ValueError, match="needs lam, got None"):
        Aligner.load(_write(tmp_path / "c.safetensors", torch.eye(3, dtype=F64), "near_isometry"))
    with pytest.raises(ValueError, match=r"W is empty \(shape \(0, 0\)\)"):
        Aligner.load(_write(tmp_path / "d.safetensors", torch.zeros(0, 0, dtype=F64), "affine"))
    with pytest.raises(ValueError, match=r"e.safetensors' has a non-numeric lam 'abc'"):
        Aligner.load(_write(tmp_path / "e.safetensors", torch.eye(3, dtype=F64), "near_isometry", "abc"))
    with pytest.raises(ValueError, match="is a directory"):
        Aligner.load(tmp_path)
    # honest files load: affine 2·I, a near-isometry inside its λ, a float32 Procrustes fit
    assert Aligner.load(_write(tmp_path / "f.safetensors", two, "affine")).kind == "affine"
    ok = Aligner.load(
        _write(tmp_path / "g.safetensors", 1.05 * torch.eye(3, dtype=F64), "near_isometry", "0.5")
    )
    assert ok.lam == 0.5
    g = torch.Generator().manual_seed(4)
    X, Y = torch.randn(500, 64, generator=g), torch.randn(500, 64, generator=g)
    a = fit(X, Y, dtype=torch.float32)
    b = Aligner.load(a.save(tmp_path / "h.safetensors"))
    assert b.dtype == torch.float32 and torch.equal(a.W, b.W)


def test_from_state_dict_checks_the_kind_too() -> None:
    a = fit(torch.randn(10, 3, dtype=F64), torch.randn(10, 3, dtype=F64))
    state = a.state_dict()
    state["W"] = 2 * state["W"]
    with pytest.raises(ValueError, match="orthonormal rows"):
        Aligner.from_state_dict(state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_load_accepts_orthogonal_maps_rounded_to_the_stored_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(5)
    Q = torch.linalg.qr(torch.randn(384, 384, generator=g, dtype=F64))[0].to(dtype)
    assert Aligner.load(_write(tmp_path / "q.safetensors", Q, "isometry")).dtype == dtype
    with pytest.raises(ValueError, match="orthonormal rows"):
        Aligner.load(_write(tmp_path / "q2.safetensors", 1.1 * Q, "isometry"))

"""orthokit.rotation.metrics against SciPy / NumPy float64 references and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from orthokit.rotation.haar import haar_matrix
from orthokit.rotation.hadamard import HadamardRotation
from orthokit.rotation.metrics import (
    angular_error,
    kurtosis,
    log_qsur,
    log_qsur_max,
    outlier_ratio,
    relative_error,
)

F64 = torch.float64


def _heavy(n: int = 400, d: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.distributions.StudentT(3.0).sample((n, d)).double()  # global RNG, seeded by conftest
    return x + 0.1 * torch.randn(n, d, generator=g, dtype=F64)


def test_kurtosis_matches_scipy() -> None:
    from scipy.stats import kurtosis as sk

    x = _heavy()
    assert kurtosis(x) == pytest.approx(float(sk(x.numpy().ravel(), fisher=False, bias=True)), rel=1e-12)
    per = kurtosis(x, per_channel=True)
    assert isinstance(per, torch.Tensor) and per.shape == (16,)
    np.testing.assert_allclose(per.numpy(), sk(x.numpy(), axis=0, fisher=False, bias=True), rtol=1e-12)
    assert kurtosis(x, excess=True) == pytest.approx(float(sk(x.numpy().ravel(), fisher=True)), rel=1e-12)
    # leading dims are tokens; float32 input is measured in float64
    x3 = x.reshape(20, 20, 16).float()
    np.testing.assert_allclose(
        kurtosis(x3, per_channel=True).numpy(), sk(x3.double().numpy().reshape(-1, 16), axis=0, fisher=False)
    )


def test_kurtosis_closed_forms_and_constant_channel() -> None:
    signs = torch.tensor([1.0, -1.0] * 50)
    assert kurtosis(signs) == pytest.approx(1.0)  # Rademacher: m4/m2² = 1
    x = torch.stack([torch.randn(100), torch.full((100,), 2.0)], dim=1)
    k = kurtosis(x, per_channel=True)
    assert math.isnan(float(k[1])) and not math.isnan(float(k[0]))


def test_outlier_ratio_reference_and_rotation_effect() -> None:
    x = torch.randn(64, 128, dtype=F64)
    x[:, 5] *= 40
    ref = x.abs().max().item() / math.sqrt((x**2).mean().item())
    assert outlier_ratio(x) == pytest.approx(ref, rel=1e-12)
    per = outlier_ratio(x, dim=-1)
    np.testing.assert_allclose(per.numpy(), (x.abs().amax(-1) / x.pow(2).mean(-1).sqrt()).numpy(), rtol=1e-12)
    assert outlier_ratio(torch.tensor([0.0, 0.0, 7.0, 0.0])) == pytest.approx(2.0)  # one-hot: √n
    assert outlier_ratio(HadamardRotation(128, seed=0).apply(x)) < outlier_ratio(x) / 3
    assert math.isnan(outlier_ratio(torch.zeros(4)))


def test_log_qsur_closed_forms() -> None:
    lam = torch.tensor([4.0, 1.0, 0.5, 0.25], dtype=F64)
    cov = torch.diag(lam)
    d = 4
    # identity rotation: ½Σ log λ − (d/2) log max λ
    assert log_qsur(cov=cov, constant=False) == pytest.approx(
        0.5 * lam.log().sum().item() - 2 * math.log(4.0)
    )
    # a Hadamard rotation flattens the diagonal of a diagonal covariance to tr/d: (d/2)·log(GM/AM)
    r = HadamardRotation(4, seed=0)
    gm, am = lam.log().mean().exp().item(), lam.mean().item()
    assert log_qsur(cov=cov, rotation=r, constant=False) == pytest.approx(
        d / 2 * math.log(gm / am), rel=1e-12
    )
    # constant: log κ_d − d log 2 with κ_d = π^{d/2}/Γ(d/2+1); d = 2 → π/4 (a disc inside a square)
    assert math.exp(log_qsur_max(2)) == pytest.approx(math.pi / 4)
    from scipy.special import gammaln

    assert log_qsur_max(7) == pytest.approx(3.5 * math.log(math.pi) - gammaln(4.5) - 7 * math.log(2))
    assert log_qsur(cov=torch.eye(6, dtype=F64)) == pytest.approx(log_qsur_max(6))  # the maximum
    assert log_qsur(cov=cov, rotation=r) <= log_qsur_max(4)
    # a rotation never beats the flat-diagonal bound (d/2)·log(GM/AM)
    q = haar_matrix(4, 3)
    assert log_qsur(cov=cov, rotation=q, constant=False) <= d / 2 * math.log(gm / am) + 1e-12


def test_log_qsur_from_samples_matches_numpy() -> None:
    x = _heavy(500, 8)
    x[:, 2] += 3.0
    xc = x.numpy() - x.numpy().mean(0)
    sigma = xc.T @ xc / xc.shape[0]
    q = haar_matrix(8, 1).numpy()
    s2 = q.T @ sigma @ q
    ref = 0.5 * np.log(np.linalg.eigvalsh(sigma)).sum() - 4 * np.log(np.diag(s2).max())
    assert log_qsur(x, rotation=torch.from_numpy(q), constant=False) == pytest.approx(ref, rel=1e-10)
    raw = x.numpy().T @ x.numpy() / 500  # center=False: raw second moment
    ref_raw = 0.5 * np.log(np.linalg.eigvalsh(raw)).sum() - 4 * np.log(np.diag(raw).max())
    assert log_qsur(x, center=False, constant=False) == pytest.approx(ref_raw, rel=1e-10)
    assert log_qsur(torch.randn(3, 8)) == -math.inf  # fewer samples than dims: singular


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({}, ValueError, "exactly one of x"),
        ({"x": torch.randn(4, 3), "cov": torch.eye(3)}, ValueError, "exactly one of x"),
        ({"cov": torch.ones(2, 3)}, ValueError, "square"),
        ({"cov": torch.tensor([[1.0, 0.5], [0.0, 1.0]])}, ValueError, "symmetric"),
        ({"cov": torch.eye(4), "rotation": HadamardRotation(8)}, ValueError, "size 8, expected d=4"),
        ({"cov": torch.eye(2), "rotation": 2.0 * torch.eye(2)}, ValueError, "not orthogonal"),
        ({"cov": torch.eye(2), "rotation": "hadamard"}, TypeError, "rotation must be"),
        ({"x": torch.tensor([[1.0, float("nan")]])}, ValueError, "non-finite"),
        ({"x": [[1.0]]}, TypeError, "torch.Tensor"),
    ],
)
def test_log_qsur_rejects(kwargs: dict, err: type[Exception], match: str) -> None:
    with pytest.raises(err, match=match):
        log_qsur(**kwargs)


def test_angular_error_reference_and_tiny_angles() -> None:
    x = torch.randn(50, 32, dtype=F64)
    q = x + 0.3 * torch.randn(50, 32, dtype=F64)
    cos = (x * q).sum(-1) / (x.norm(dim=-1) * q.norm(dim=-1))
    np.testing.assert_allclose(angular_error(x, q).numpy(), np.arccos(cos.numpy()), rtol=1e-10)
    # tiny angle: acos(cos θ) loses it entirely, Kahan's formula keeps it
    e0 = torch.zeros(32, dtype=F64)
    e0[0] = 1
    e1 = torch.zeros(32, dtype=F64)
    e1[1] = 1
    a = angular_error(e0[None], (e0 + 1e-10 * e1)[None])
    assert float(a[0]) == pytest.approx(1e-10, rel=1e-6)
    assert float(angular_error(e0[None], -e0[None])[0]) == pytest.approx(math.pi)
    # along another dim; zero vectors give nan
    np.testing.assert_allclose(angular_error(x.T, q.T, dim=0).numpy(), np.arccos(cos.numpy()), rtol=1e-10)
    assert math.isnan(float(angular_error(torch.zeros(1, 3), torch.ones(1, 3))[0]))


def test_relative_error_reference() -> None:
    x = torch.randn(10, 8, dtype=F64)
    q = x + 0.01 * torch.randn(10, 8, dtype=F64)
    assert relative_error(x, q) == pytest.approx(float(np.linalg.norm(q - x) / np.linalg.norm(x)), rel=1e-12)
    per = relative_error(x, q, dim=1)
    np.testing.assert_allclose(
        per.numpy(), np.linalg.norm(q - x, axis=1) / np.linalg.norm(x, axis=1), rtol=1e-12
    )
    with pytest.raises(ValueError, match="same shape"):
        relative_error(x, q[:, :7])
    with pytest.raises(ValueError, match="out of range"):
        relative_error(x, q, dim=2)
    with pytest.raises(ValueError, match="real floating"):
        relative_error(x.long(), q.long())


def test_metrics_do_not_modify_inputs() -> None:
    x = torch.randn(6, 8)
    x0 = x.clone()
    kurtosis(x), outlier_ratio(x), log_qsur(x), angular_error(x, x + 1), relative_error(x, x * 2)
    assert torch.equal(x, x0)

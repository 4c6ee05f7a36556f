"""Hard-thresholding sparse coding against brute-force best s-term approximation; recovery metric on known angles."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from orthokit.dictionary._common import haar_orthogonal
from orthokit.dictionary.metrics import atom_recovery, planted_data
from orthokit.dictionary.sparse import hard_threshold, reconstruct, sparse_code


def test_top_s_is_the_best_s_term_approximation() -> None:
    d, s = 6, 2
    D = haar_orthogonal(d, seed=0)
    Y = torch.randn(d, 25, dtype=torch.float64)
    X = sparse_code(D, Y, sparsity=s)
    assert int((X != 0).sum(0).max()) == s
    ours = ((Y - reconstruct(D, X)) ** 2).sum(0).numpy()
    Dn, Yn = D.numpy(), Y.numpy()
    best = np.full(Y.shape[1], np.inf)
    for S in itertools.combinations(range(d), s):  # least squares on every support
        A = Dn[:, S]
        coef, *_ = np.linalg.lstsq(A, Yn, rcond=None)
        best = np.minimum(best, ((Yn - A @ coef) ** 2).sum(0))
    np.testing.assert_allclose(ours, best, rtol=1e-10, atol=1e-12)


def test_threshold_and_edge_sparsities() -> None:
    C = torch.tensor([[0.5, -2.0], [1.5, 0.1], [-1.0, 0.0]], dtype=torch.float64)
    assert torch.equal(
        hard_threshold(C, threshold=1.0),
        torch.tensor([[0.0, -2.0], [1.5, 0.0], [-1.0, 0.0]], dtype=torch.float64),
    )
    assert torch.equal(hard_threshold(C, sparsity=0), torch.zeros_like(C))
    assert torch.equal(hard_threshold(C, sparsity=3), C)


@pytest.mark.parametrize(
    ("kw", "exc"),
    [
        ({}, ValueError),
        ({"sparsity": 1, "threshold": 0.5}, ValueError),
        ({"sparsity": 4}, ValueError),
        ({"sparsity": 1.5}, TypeError),
        ({"threshold": -1.0}, ValueError),
        ({"threshold": float("nan")}, ValueError),
    ],
)
def test_bad_code_arguments(kw: dict, exc: type) -> None:
    with pytest.raises(exc):
        hard_threshold(torch.randn(3, 4), **kw)


def test_bad_coefficients() -> None:
    with pytest.raises(ValueError, match="NaN"):
        hard_threshold(torch.tensor([[float("nan")]]), sparsity=1)
    with pytest.raises(ValueError, match="2-D"):
        hard_threshold(torch.randn(3), sparsity=1)
    with pytest.raises(ValueError, match="rows|d="):
        sparse_code(torch.eye(3), torch.randn(4, 2), sparsity=1)


def test_atom_recovery_measures_the_rotated_atom() -> None:
    d, deg = 5, 10.0
    D0 = haar_orthogonal(d, seed=1)
    a = math.radians(deg)
    R = torch.eye(d, dtype=torch.float64)
    R[:2, :2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    r = atom_recovery(D0 @ R, D0)
    assert abs(r["max_angle_deg"] - deg) < 1e-9
    assert abs(r["column_match_error"] - (1 - math.cos(a))) < 1e-12


def test_planted_data_statistics() -> None:
    Y, D0 = planted_data(16, 20000, theta=0.1, seed=3)
    X = D0.T @ Y
    assert abs(float((X.abs() > 1e-12).double().mean()) - 0.1) < 0.01
    with pytest.raises(ValueError, match="theta"):
        planted_data(4, 10, theta=0.0)

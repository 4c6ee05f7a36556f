"""Online Frank–Wolfe orthogonal DL against a float64 numpy re-derivation of its steps, and its input contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from orthokit.dictionary._common import haar_orthogonal, lp_gradient
from orthokit.dictionary.metrics import planted_data
from orthokit.dictionary.online_fw import OnlineFrankWolfeODL

D64 = torch.float64


def _np_polar(G: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(G)
    return U @ Vt


def check_steps_match_numpy_reference(cls: type = OnlineFrankWolfeODL) -> None:
    """Every FW step of ``cls`` equals a float64 numpy re-derivation of the algorithm with its default schedules
    (``ρ_t = t^{−1/2}`` gradient averaging, ``γ_t = t^{−3/4}`` FW step, polar-factor oracle); AssertionError if not.
    This is the guard of the algorithm's defining rules — which the conformance suite (purpose checks: recovery,
    orthogonality, memory) cannot see, since e.g. ``ρ_t = 1`` still recovers planted dictionaries."""
    d, p = 6, 3.0
    Y, _ = planted_data(d, 90, theta=0.4, seed=0)
    D = haar_orthogonal(d, seed=11).numpy()
    odl = cls(d, power=p, init=torch.from_numpy(D.copy()))
    G = np.zeros((d, d))
    for t, s in enumerate(range(0, 90, 30), start=1):
        y = Y[:, s : s + 30].numpy()
        X = D.T @ y
        g = p / y.shape[1] * y @ (np.sign(X) * np.abs(X) ** (p - 1)).T
        rho, gamma = t**-0.5, t**-0.75
        G = (1 - rho) * G + rho * g
        S = _np_polar(G)
        D = (1 - gamma) * D + gamma * S
        odl.partial_fit(Y[:, s : s + 30])
        np.testing.assert_allclose(odl.iterate.numpy(), D, atol=1e-12)
        np.testing.assert_allclose(odl.state_tensors()["oracle"].numpy(), S, atol=1e-12)
    U, _, Vt = np.linalg.svd(D)
    np.testing.assert_allclose(odl.dictionary.numpy(), U @ Vt, atol=1e-10)
    assert odl.t == 3 and odl.n_samples_seen == 90


def test_steps_match_numpy_reference() -> None:
    check_steps_match_numpy_reference(OnlineFrankWolfeODL)


class FWNoGradientAveraging(OnlineFrankWolfeODL):
    """Mutant: ``ρ_t = 1`` — the oracle sees only the current mini-batch's gradient (no recursive averaging)."""

    def step_sizes(self, t: int) -> tuple[float, float]:
        return float(t) ** -self.gamma_exponent, 1.0


class FWFullStep(OnlineFrankWolfeODL):
    """Mutant: ``γ_t = 1`` — the iterate jumps to the oracle output (no Frank–Wolfe averaging of iterates)."""

    def step_sizes(self, t: int) -> tuple[float, float]:
        return 1.0, float(t) ** -self.rho_exponent


@pytest.mark.parametrize("mutant", [FWNoGradientAveraging, FWFullStep])
def test_reference_comparison_rejects_algorithm_mutants(mutant: type) -> None:
    """``ρ_t = 1`` passes every conformance check (it still recovers planted dictionaries, stays orthogonal, keeps
    constant memory); the float64 reference of the steps is the test that must — and does — reject it."""
    with pytest.raises(AssertionError):
        check_steps_match_numpy_reference(mutant)


def test_gradient_matches_autograd() -> None:
    Y = torch.randn(5, 40, dtype=D64)
    D = torch.randn(5, 5, dtype=D64, requires_grad=True)
    for p in (3.0, 4.0):
        f = (D.T @ Y).abs().pow(p).sum() / Y.shape[1]
        (g,) = torch.autograd.grad(f, D)
        torch.testing.assert_close(lp_gradient(D.detach(), Y, p), g, atol=1e-10, rtol=1e-10)


def test_iterate_stays_in_the_spectral_ball_and_dictionary_is_orthogonal() -> None:
    Y, _ = planted_data(10, 2000, theta=0.2, seed=1)
    for report in ("polar", "oracle"):
        odl = OnlineFrankWolfeODL(10, report=report, seed=1)
        for s in range(0, 2000, 50):
            odl.partial_fit(Y[:, s : s + 50])
            assert float(torch.linalg.matrix_norm(odl.iterate, ord=2)) <= 1 + 1e-12
            D = odl.dictionary
            assert float((D.T @ D - torch.eye(10, dtype=D64)).abs().max()) <= 1e-10
        assert odl.fw_gap >= -1e-12  # ⟨S − D, G⟩ ≥ 0: S maximizes the linear model over the ball


def test_fit_equals_streaming_partial_fit() -> None:
    Y, _ = planted_data(6, 300, seed=2)
    a = OnlineFrankWolfeODL(6, seed=3).fit(Y, batch_size=40, seed=None)
    b = OnlineFrankWolfeODL(6, seed=3)
    for s in range(0, 300, 40):
        b.partial_fit(Y[:, s : s + 40])
    assert torch.equal(a.iterate, b.iterate) and a.t == b.t == 8


def test_float32_state_and_row_major_hint() -> None:
    Y, _ = planted_data(6, 200, seed=4, dtype=torch.float32)
    odl = OnlineFrankWolfeODL(6, dtype=torch.float32).fit(Y)
    D = odl.dictionary
    assert D.dtype == torch.float32 and float((D.T @ D - torch.eye(6)).abs().max()) < 1e-5
    with pytest.raises(ValueError, match="pass Y.T"):
        odl.partial_fit(torch.randn(30, 6))


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"power": 2.0}, "power"),
        ({"gamma_exponent": 1.5}, "gamma_exponent"),
        ({"rho_exponent": -0.1}, "rho_exponent"),
        ({"report": "iterate"}, "report"),
        ({"init": torch.eye(6, dtype=D64) * 2}, "spectral norm"),
        ({"init": torch.eye(5, dtype=D64)}, "init"),
        ({"dtype": torch.float16}, "dtype"),
    ],
)
def test_bad_options(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        OnlineFrankWolfeODL(6, **kw)


def test_overflowing_batch_leaves_state_untouched() -> None:
    odl = OnlineFrankWolfeODL(4).fit(torch.randn(4, 64, dtype=D64))
    D, G, t = odl.iterate, odl.state_tensors()["grad_avg"].clone(), odl.t
    with pytest.raises(ValueError, match="overflow"):
        odl.partial_fit(torch.full((4, 3), 1e200, dtype=D64))
    with pytest.raises(TypeError, match="floating"):
        odl.partial_fit(torch.ones(4, 3, dtype=torch.int64))
    assert torch.equal(odl.iterate, D) and torch.equal(odl.state_tensors()["grad_avg"], G) and odl.t == t

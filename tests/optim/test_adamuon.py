"""AdaMuon: element-wise second moment + RMS alignment vs float64 reference (arXiv:2507.11005)."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.optim.adamuon import adamuon_normalize, sign_stabilize


def _polar64(x: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return u @ vh


def test_matches_float64_reference_with_bias_correction() -> None:
    m, n, b2, eps = 9, 5, 0.999, 1e-8
    v = torch.zeros(m, n, dtype=torch.float64)
    v_ref = torch.zeros(m, n, dtype=torch.float64)
    for t in range(1, 5):
        o = _polar64(torch.randn(m, n, dtype=torch.float64))
        out = adamuon_normalize(o, v, step=t, beta2=b2, eps=eps)
        v_ref = b2 * v_ref + (1 - b2) * o * o
        ref = o / ((v_ref / (1 - b2**t)).sqrt() + eps)
        ref = ref * math.sqrt(min(m, n)) / (ref.norm() + eps)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v, v_ref)


def test_first_step_is_sign_like_and_rms_aligned() -> None:
    # at t=1 the bias-corrected v equals O⊙O, so O/sqrt(v) = sign(O); after rescaling and ×0.2·sqrt(max(m,n))
    # the update RMS is exactly 0.2 (AdaMuon's "RMS-aligned" step)
    m, n = 24, 40
    o = _polar64(torch.randn(m, n)).float()
    out = adamuon_normalize(o, torch.zeros(m, n), step=1, eps=1e-12)
    expect = torch.sign(o) * math.sqrt(min(m, n)) / math.sqrt(m * n)
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-6)
    upd = out * 0.2 * math.sqrt(max(m, n))
    assert upd.pow(2).mean().sqrt().item() == pytest.approx(0.2, rel=1e-4)


def test_sign_stabilize() -> None:
    u = torch.tensor([[-2.0, 0.0, 1e-9]])
    torch.testing.assert_close(sign_stabilize(u), torch.tensor([[-1.0, 0.0, 1.0]]))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="state has shape"):
        adamuon_normalize(torch.randn(3, 4), torch.zeros(4, 3), step=1)
    with pytest.raises(ValueError, match="step"):
        adamuon_normalize(torch.randn(3, 4), torch.zeros(3, 4), step=0)


@pytest.mark.parametrize("sign", [False, True])
def test_optimizer_step_equals_manual_float64(sign: bool) -> None:
    from orthokit.optim.adamuon import AdaMuon

    w0 = torch.randn(10, 6, dtype=torch.float64)
    grads = [torch.randn(10, 6, dtype=torch.float64) for _ in range(3)]
    lr, mu, wd = 0.05, 0.9, 0.01
    w = torch.nn.Parameter(w0.clone())
    opt = AdaMuon([w], lr=lr, momentum=mu, weight_decay=wd, ns_method="svd", sign_stabilize=sign)
    m, v, ref = torch.zeros_like(w0), torch.zeros_like(w0), w0.clone()
    for t, g in enumerate(grads, start=1):
        w.grad = g.clone()
        opt.step()
        m = mu * m + (1 - mu) * g
        u = (1 - mu) * g + mu * m
        o = adamuon_normalize(_polar64(torch.sign(u) if sign else u), v, step=t)
        ref = ref * (1 - lr * wd) - lr * 0.2 * math.sqrt(10) * o
    torch.testing.assert_close(w.detach(), ref, rtol=1e-10, atol=1e-10)
    rms = ((w0 * (1 - lr * wd) ** 3 - w.detach()).pow(2).mean().sqrt()).item()
    assert 0 < rms < 3 * 0.2 * lr  # RMS-aligned steps: each step has RMS exactly 0.2·lr


def test_optimizer_rejects_bad_hyperparameters() -> None:
    from orthokit.optim.adamuon import AdaMuon

    p = [torch.nn.Parameter(torch.randn(4, 3))]
    with pytest.raises(ValueError, match="beta2"):
        AdaMuon(p, beta2=-0.1)
    with pytest.raises(TypeError, match="sign_stabilize"):
        AdaMuon(p, sign_stabilize="yes")

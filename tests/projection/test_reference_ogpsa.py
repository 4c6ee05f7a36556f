"""OGPSA against an independent float64 re-implementation of the released code's projection hook.

Reference: github.com/SunGL001/OGPSA ``src/llamafactory/train/sft_pg/trainer.py`` (commit cddc63f): one base
gradient per reference *dataset* (summed over its batches, normalised per tensor), two datasets → Gram–Schmidt
``u1 = g1/‖g1‖``, ``u2 = (g2 − ⟨g2,u1⟩u1)/‖·‖``, hook ``g ← g − ⟨g,u1⟩u1 − ⟨g,u2⟩u2``; ``threshold`` (one base):
project if cos < 0, scale by ``base_scale`` if cos > 0. Written from those equations, not from orthokit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orthokit.projection.ogpsa import OGPSA, OGPSAProjection, reference_gradient_bases

EPS = 1e-8


def _linear_loss(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. the weight is exactly ``x`` (constant), so each batch *is* its gradient direction."""
    return (m.weight @ x).sum()


def _mse(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.mse_loss(m(b[0]), b[1])


def test_rank2_batches_AABB_protect_both_datasets_directions() -> None:
    """The audit's example: rank 2, batches [A, A, B, B] with ∇A = e1, ∇B = e2 → basis spans {e1, e2}.

    A stride split ([A, B], [A, B]) would give the single direction (e1 + e2)/√2 and leave half of each
    dataset's direction unprotected."""
    model = nn.Linear(3, 1, bias=False).double()
    e1, e2 = torch.eye(3, dtype=torch.float64)[0], torch.eye(3, dtype=torch.float64)[1]
    B = reference_gradient_bases(model, _linear_loss, [e1, e1, e2, e2], rank=2, dtype=torch.float64)["weight"]
    assert B.shape == (3, 2)
    P = B @ B.T
    expected = torch.diag(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(P, expected, atol=1e-12)
    # the optimizer wrapper and the registered method use the same grouping
    model2 = nn.Sequential(nn.Linear(3, 1, bias=False)).double()
    m = OGPSAProjection(model2, rank=2, loss_fn=lambda mod, x: _linear_loss(mod[0], x))
    m.after_task([e1, e1, e2, e2])
    Bm = m.memory.basis("0").double()
    assert torch.allclose(Bm @ Bm.T, expected, atol=1e-6)
    # an update along e1 (dataset A's direction) is fully removed
    opt = OGPSA(
        torch.optim.SGD(model.parameters(), lr=1.0),
        model,
        loss_fn=_linear_loss,
        reference_batches=[e1, e1, e2, e2],
        rank=2,
    )
    before = model.weight.detach().clone()
    model.weight.grad = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    opt.step()
    assert torch.equal(model.weight.detach(), before)


def _ref_base_grads(model: nn.Module, datasets: list[list]) -> list[dict[str, torch.Tensor]]:
    """Per dataset: summed gradient per tensor, normalised (released code: ``g / (‖g‖ + 1e-10)``)."""
    out = []
    for batches in datasets:
        model.zero_grad()
        for b in batches:
            _mse(model, b).backward()
        d = {}
        for n, p in model.named_parameters():
            g = p.grad.detach().clone()
            d[n] = g / (g.norm() + 1e-10)
        out.append(d)
    model.zero_grad()
    return out


def _ref_hook(grad: torch.Tensor, bases: list[torch.Tensor], rule: str, scale: float) -> torch.Tensor:
    if len(bases) == 2:
        g1, g2 = bases
        u1 = g1 / (g1.norm() + EPS)
        perp = g2 - (g2 * u1).sum() * u1
        n2 = perp.norm() + EPS
        u2 = torch.zeros_like(u1) if n2 < 1e-6 else perp / n2
        return grad - (grad * u1).sum() * u1 - (grad * u2).sum() * u2
    (u,) = bases
    dot = (grad * u).sum()
    if rule == "orthogonal":
        return grad - dot / ((u * u).sum() + EPS) * u
    cos = dot / ((grad.norm() + EPS) * (u.norm() + EPS))
    if cos < 0:
        return grad - dot / ((u * u).sum() + EPS) * u
    return grad * scale if cos > 0 else grad


def _data(seed: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(6, 5, generator=g, dtype=torch.float64),
            torch.randn(6, 2, generator=g, dtype=torch.float64),
        )
        for _ in range(n)
    ]


def _run_both(rank: int, rule: str, scale: float, steps: int = 6, refresh: int = 2) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    ref_model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    ref_model.load_state_dict(model.state_dict())
    datasets = [_data(1, 2), _data(2, 2)][:rank]  # dataset A = 2 batches, dataset B = 2 batches
    flat_ref = [b for ds in datasets for b in ds]
    opt = OGPSA(
        torch.optim.SGD(model.parameters(), lr=0.05),
        model,
        loss_fn=_mse,
        reference_batches=flat_ref,
        rank=rank,
        refresh_every=refresh,
        rule=rule,
        scale=scale,
    )
    train = _data(3, steps)
    bases: list[dict[str, torch.Tensor]] = []
    for s, b in enumerate(train):
        # orthokit
        opt.zero_grad()
        _mse(model, b).backward()
        opt.step()
        # reference: refresh every `refresh` steps (step 0 included), hook-projected gradient, plain SGD
        if s % refresh == 0:
            bases = _ref_base_grads(ref_model, datasets)
        ref_model.zero_grad()
        _mse(ref_model, b).backward()
        with torch.no_grad():
            for n, p in ref_model.named_parameters():
                g = _ref_hook(p.grad, [d[n] for d in bases], rule, scale)
                p -= 0.05 * g
        for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
            assert torch.allclose(p, q, atol=1e-6, rtol=0), (s, n, float((p - q).abs().max()))


def test_rank2_orthogonal_matches_released_hook_over_steps_with_refresh() -> None:
    _run_both(rank=2, rule="orthogonal", scale=1.0)


def test_rank1_threshold_matches_released_hook_over_steps() -> None:
    _run_both(rank=1, rule="threshold", scale=0.5)

"""OSFT against independent float64 re-implementations of the reference rules.

* Update (OSFT repo ``svd/projected_gradient_descent.py``, mini_trainer ``osft_utils.py`` + PR #16): trainable
  ``U_l, S_l, V_l``; gradients projected ``dU_l ← dU_l − U_h U_hᵀ dU_l``, ``dV_l ← dV_l − dV_l V_hᵀ V_h``; after the
  optimizer step the parameters ``U_l, V_l`` are re-projected the same way.
* Across tasks (method / PEFT OSF docs: grow the preserved rank): the preserved set after the next task is the
  old one plus the top singular directions of ``(I − U_hU_hᵀ) W (I − V_hᵀV_h)``.
Written from those equations with explicit projector matrices, not from orthokit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orthokit.projection.osft import OSFTLinear, OSFTOptimizer, OSFTProjection


def _ref_osft_sgd(W: torch.Tensor, b: torch.Tensor, k: int, data: list, lr: float) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    Uh, Sh, Vhh = U[:, :k], S[:k], Vh[:k]
    Ul = U[:, k:].clone().requires_grad_(True)
    Sl = S[k:].clone().requires_grad_(True)
    Vl = Vh[k:].clone().requires_grad_(True)
    bias = b.clone().requires_grad_(True)
    PU = torch.eye(W.shape[0], dtype=W.dtype) - Uh @ Uh.T
    PV = torch.eye(W.shape[1], dtype=W.dtype) - Vhh.T @ Vhh
    for x, y in data:
        Wc = Uh @ torch.diag(Sh) @ Vhh + Ul @ torch.diag(Sl) @ Vl
        loss = F.mse_loss(x @ Wc.T + bias, y)
        gU, gS, gV, gb = torch.autograd.grad(loss, [Ul, Sl, Vl, bias])
        with torch.no_grad():
            Ul -= lr * (PU @ gU)
            Sl -= lr * gS
            Vl -= lr * (gV @ PV)
            bias -= lr * gb
            Ul.copy_(PU @ Ul)  # PR #16: parameters re-projected after the step
            Vl.copy_(Vl @ PV)
    with torch.no_grad():
        return Uh @ torch.diag(Sh) @ Vhh + Ul @ torch.diag(Sl) @ Vl


def test_osft_linear_sgd_matches_reference_reparametrised_update() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(7, 6).double()
    W0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    g = torch.Generator().manual_seed(1)
    data = [
        (
            torch.randn(9, 7, generator=g, dtype=torch.float64),
            torch.randn(9, 6, generator=g, dtype=torch.float64),
        )
        for _ in range(6)
    ]
    layer = OSFTLinear(lin, k=3)
    opt = OSFTOptimizer(torch.optim.SGD(layer.parameters(), lr=0.3), [layer])
    for x, y in data:
        opt.zero_grad()
        F.mse_loss(layer(x), y).backward()
        opt.step()
    ref = _ref_osft_sgd(W0, b0, 3, data, lr=0.3)
    assert (ref - W0).norm() > 1e-2
    assert torch.allclose(layer.weight.detach(), ref, atol=1e-6, rtol=0)


def _proj(B: torch.Tensor) -> torch.Tensor:
    B = B.double()
    return B @ torch.linalg.pinv(B)


def test_preserved_set_grows_as_old_plus_top_residual_directions() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10, bias=False)).double()
    osft = OSFTProjection(model, preserve_ratio=0.5)
    osft.after_task()
    W1 = model[0].weight.detach().clone()
    U1, S1, Vh1 = torch.linalg.svd(W1)
    Uh, Vh = U1[:, :5], Vh1[:5].T  # reference: top-5 of the first weight
    assert torch.allclose(_proj(osft.memory.basis("0")), Vh @ Vh.T, atol=1e-6)
    # "task 2": a large update confined to the complement (what any projected optimizer applies)
    g = torch.Generator().manual_seed(3)
    PU = torch.eye(10, dtype=torch.float64) - Uh @ Uh.T
    PV = torch.eye(12, dtype=torch.float64) - Vh @ Vh.T
    with torch.no_grad():
        model[0].weight += 20.0 * PU @ torch.randn(10, 12, generator=g, dtype=torch.float64) @ PV
    W2 = model[0].weight.detach().clone()
    assert osft.after_task() == {"0": 2}  # floor(0.5 × 5 free directions)
    R = PU @ W2 @ PV
    Ur, _, Vhr = torch.linalg.svd(R)
    V_ref = torch.cat([Vh, Vhr[:2].T], 1)
    U_ref = torch.cat([Uh, Ur[:, :2]], 1)
    assert torch.allclose(_proj(osft.memory.basis("0")), V_ref @ V_ref.T, atol=1e-6)
    assert torch.allclose(_proj(osft.memory.layer("0").u), U_ref @ U_ref.T, atol=1e-6)

"""HLOP against an independent float64 re-implementation of the authors' Hebbian update and schedule.

Reference: github.com/pkuxmq/HLOP-SNN (commit 530b89a). ``modules/hlop_module.py::update_weights``:
``dW = clamp(yᵀ(x − x̂)/B, ±10)``, fixed rows zeroed, ``m = 0.9·m + 0.1·dW`` (fixed rows' momentum kept aside),
``W += lr·m``; ``forward_with_update``: 5 iterations per batch with ``y = xWᵀ``, ``x̂ = yW`` over all rows; module
default ``lr = 0.01``; ``add_subspace``: ``orthogonal_`` on the new block only. ``spiking_train_pmnist.py``: the
neurons are updated in the forward pass of every training batch (``update_hlop=True``) while the task trains,
the old subspace fixed (``fix_subspace_id_list=[0]``). Written from that code, not from orthokit.
"""

from __future__ import annotations

import torch
from torch import nn

from orthokit.projection.hlop import HLOP, HebbianSubspace


class RefHLOP:
    def __init__(self, H: torch.Tensor, lr: float = 0.01) -> None:
        self.W = H.clone().double()
        self.m = torch.zeros_like(self.W)
        self.lr = lr

    def update_weights(self, x: torch.Tensor, fixed: int) -> None:
        y = x @ self.W.T
        xhat = y @ self.W
        dW = torch.clamp(y.T @ (x - xhat) / x.shape[0], -10, 10)
        dW[:fixed] = 0.0
        keep = self.m[:fixed].clone()
        self.m[:fixed] = 0
        self.m = 0.9 * self.m + 0.1 * dW
        self.W = self.W + self.lr * self.m
        self.m[:fixed] = keep

    def forward_with_update(self, x: torch.Tensor, fixed: int, iteration: int = 5) -> None:
        for _ in range(iteration):
            self.update_weights(x, fixed)

    def add_subspace(self, new_rows: torch.Tensor) -> None:
        self.W = torch.cat([self.W, new_rows.double()])
        self.m = torch.cat([self.m, torch.zeros_like(new_rows, dtype=torch.float64)])


def _batches(n: int, count: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(2.0, 0.1, n, dtype=torch.float64)
    return [torch.randn(16, n, generator=g, dtype=torch.float64) * scale for _ in range(count)]


def test_hebbian_update_matches_reference_over_two_tasks() -> None:
    n = 12
    h = HebbianSubspace(
        n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )  # HLOP defaults
    assert h.lr == 0.01 and h.iters == 5 and h.momentum == 0.9
    ref = RefHLOP(h.H)
    for x in _batches(n, 8, 1):
        h.update(x)
        ref.forward_with_update(x, fixed=0)
    assert (h.H - ref.W).abs().max() > 0  # sanity: not comparing the start point
    assert torch.allclose(h.H, ref.W, atol=1e-6, rtol=0)
    h.add_neurons(2)  # task 2: 3 rows frozen, 2 new rows learn the residual
    ref.add_subspace(h.H[3:])
    for x in _batches(n, 8, 2):
        h.update(x)
        ref.forward_with_update(x, fixed=3)
    assert torch.allclose(h.H, ref.W, atol=1e-6, rtol=0)


def test_new_neurons_are_orthonormal_but_not_orthogonalised_against_old_rows() -> None:
    h = HebbianSubspace(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    h.add_neurons(3)
    new, old = h.H[4:], h.H[:4]
    assert torch.allclose(new @ new.T, torch.eye(3, dtype=torch.float64), atol=1e-12)  # orthogonal_ block
    assert float((new @ old.T).abs().max()) > 1e-2  # HLOP does not orthogonalise against the old rows
    h2 = HebbianSubspace(10, 4, init="orthogonal_to_old", generator=torch.Generator().manual_seed(0))
    h2.add_neurons(3)
    assert float((h2.H[4:] @ h2.H[:4].T).abs().max()) < 1e-5  # orthokit's earlier variant, still available


def test_registered_hlop_learns_online_from_training_batches_like_the_reference() -> None:
    """HLOP's schedule: the neurons are updated from each training batch's layer input during the task."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Linear(5, 3, bias=False)).double()
    hlop = HLOP(model, ["0"], k_new=2)  # defaults: online, lr 0.01, EMA momentum
    assert hlop.hebb["0"].H.shape == (2, 6)  # the first task's neurons exist before training starts
    ref = RefHLOP(hlop.hebb["0"].H)
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(10, 6, generator=g, dtype=torch.float64) for _ in range(5)]
    opt = hlop.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    for x in data:
        opt.zero_grad()
        model(x).pow(2).mean().backward()  # training forward → Hebbian update of the current neurons
        opt.step()
        ref.forward_with_update(x, fixed=0)
    with torch.no_grad():
        model(torch.randn(4, 6, dtype=torch.float64))  # an evaluation forward (no grad) does not learn
    assert torch.allclose(hlop.hebb["0"].H.double(), ref.W, atol=1e-6, rtol=0)  # H stored in float32
    assert hlop.after_task() == {"0": 2}
    # task 2: the task-1 rows are frozen and protected; the new rows learn online again
    ref.add_subspace(hlop.hebb["0"].H[2:])
    opt = hlop.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    for x in data[::-1]:
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        ref.forward_with_update(x, fixed=2)
    assert torch.allclose(hlop.hebb["0"].H.double(), ref.W, atol=1e-6, rtol=0)  # H stored in float32

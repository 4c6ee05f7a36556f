"""Mutants of the orthogonality losses and heads must FAIL the conformance checks (test_conformance_losses.py).

Each mutant keeps the method's interface and breaks one defining step; a check that still passed on it would not
be testing the method's purpose. The unmodified methods pass the same checks in test_conformance_losses.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from orthokit.align.dolg import DOLGLocalBranch, MultiAtrous, OrthogonalFusion
from orthokit.align.ebv import EquiangularBasisVectors
from orthokit.align.grassmann import GrassmannClassHead, GrassmannSGD
from orthokit.align.opl import OrthogonalProjectionLoss

from . import test_conformance_losses as C
from .test_conformance_losses import _one_thread  # noqa: F401  (autouse fixture)


class OPLWithoutNormalization(OrthogonalProjectionLoss):
    """OPL on raw features (the dot products are not cosines)."""

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool)
        pos, neg = (same & ~eye).to(features.dtype), (~same).to(features.dtype)
        dot = features @ features.T
        s = (pos * dot).sum() / (pos.sum() + 1e-6)
        d = (neg * (dot.abs() if self.abs_negative else dot)).sum() / (neg.sum() + 1e-6)
        return (1.0 - s) + self.gamma * d


class OPLWithDiagonal(OrthogonalProjectionLoss):
    """OPL whose positive mean also counts each feature with itself (i = j)."""

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        f = F.normalize(features, dim=1)
        same = (labels[:, None] == labels[None, :]).to(f.dtype)
        dot = f @ f.T
        s = (same * dot).sum() / (same.sum() + 1e-6)
        d = ((1 - same) * (dot.abs() if self.abs_negative else dot)).sum() / ((1 - same).sum() + 1e-6)
        return (1.0 - s) + self.gamma * d


class EBVNotOptimized(EquiangularBasisVectors):
    """'EBV' that keeps the normalized Gaussian start (no near-orthogonality optimization)."""

    def __init__(self, n_classes: int, dim: int, *, seed: int = 0, dtype: Any = None, **kw: Any) -> None:
        super().__init__(n_classes, dim, max_cos=0.99, seed=seed, dtype=dtype, tau=kw.get("tau", 0.07))
        self.max_cos = kw.get("max_cos", 0.002)
        g = torch.Generator().manual_seed(seed)
        self.basis = F.normalize(torch.randn(n_classes, dim, generator=g, dtype=torch.float64), dim=1).to(
            self.basis.dtype
        )


class EBVGlobalRNG(EquiangularBasisVectors):
    """EBV that draws its start from torch's global generator instead of its seed."""

    def __init__(self, n_classes: int, dim: int, *, seed: int = 0, **kw: Any) -> None:
        super().__init__(n_classes, dim, seed=int(torch.randint(0, 2**31 - 1, ())), **kw)


class GrassmannSumHead(GrassmannClassHead):
    """Grassmann head whose logit sums the projection coordinates instead of taking their norm."""

    def forward(self, features: Tensor) -> Tensor:
        x = F.normalize(features, dim=1)
        return self.gamma * torch.einsum("bd,cdk->bck", x, self.bases).sum(-1)


class EuclideanSGD(torch.optim.SGD):
    """Plain SGD on the bases (no tangent projection, no retraction)."""

    def __init__(self, params: Any, lr: float, momentum: float = 0.0) -> None:
        groups = [dict(g) if isinstance(g, dict) else {"params": g} for g in params]
        for g in groups:
            g.pop("grassmann", None)
        super().__init__(groups, lr=lr, momentum=momentum)


class GrassmannSGDNoRetraction(GrassmannSGD):
    """Riemannian gradient, but the step is S − η Ĝ without retraction (drifts off the manifold)."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["grassmann"]:
                    d = d - p @ (p.mT @ d)
                p.add_(d, alpha=-group["lr"])


def fusion_wrong_norm(local: Tensor, global_: Tensor) -> Tensor:
    """DOLG fusion dividing by ‖f_g‖ instead of ‖f_g‖² (the projection is off by a factor ‖f_g‖)."""
    n = global_.norm(dim=1)
    coef = torch.einsum("bchw,bc->bhw", local, global_) / n[:, None, None]
    orth = local - coef[:, None] * global_[:, :, None, None]
    return torch.cat([global_[:, :, None, None].expand_as(orth), orth], 1)


def fusion_wrong_axis(local: Tensor, global_: Tensor) -> Tensor:
    """DOLG fusion that removes the component along the spatial mean of f_l instead of along f_g."""
    m = local.mean(dim=(2, 3))
    coef = torch.einsum("bchw,bc->bhw", local, m) / (m * m).sum(1)[:, None, None]
    orth = local - coef[:, None] * m[:, :, None, None]
    return torch.cat([global_[:, :, None, None].expand_as(orth), orth], 1)


def _fusion_module(fn: Callable[[Tensor, Tensor], Tensor]) -> type[OrthogonalFusion]:
    class Mutant(OrthogonalFusion):
        def forward(self, local: Tensor, global_: Tensor) -> Tensor:
            return fn(local, global_)

    Mutant.__name__ = fn.__name__
    return Mutant


class LocalBranchWithoutAttention(DOLGLocalBranch):
    """DOLG local branch that drops the softplus attention (returns the L2-normalized BN map only)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.bn(self.conv2(F.relu(self.conv1(self.multi_atrous(x))))), dim=1)


class MultiAtrousDilation1(MultiAtrous):
    """Multi-atrous block whose three 3×3 convs ignore their rates (dilation 1, padding 1)."""

    def forward(self, x: Tensor) -> Tensor:
        img = F.relu(self.image_conv(F.adaptive_avg_pool2d(x, 1))).expand(-1, -1, *x.shape[-2:])
        return torch.cat([F.conv2d(x, c.weight, c.bias, padding=1) for c in self.dilated] + [img], dim=1)


class LocalBranchUndilated(DOLGLocalBranch):
    """DOLG local branch built on :class:`MultiAtrousDilation1`."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 2048) -> None:
        super().__init__(in_channels, out_channels, hidden_channels)
        self.multi_atrous = MultiAtrousDilation1(in_channels, hidden_channels)


MUTANTS: list[tuple[str, Callable[[], None], str]] = [
    (
        "opl_without_normalization",
        lambda: C.check_opl(OPLWithoutNormalization),
        "orthogonal class directions",
    ),
    ("opl_with_diagonal", lambda: C.check_opl(OPLWithDiagonal), "closed form"),
    ("ebv_not_optimized", lambda: C.check_ebv(EBVNotOptimized), "exceeds its alpha"),
    ("ebv_global_rng", lambda: C.check_ebv(EBVGlobalRNG), "function of the seed"),
    ("grassmann_sum_head", lambda: C.check_grassmann(GrassmannSumHead), "basis rotation within the subspace"),
    (
        "grassmann_euclidean_sgd",
        lambda: C.check_grassmann(GrassmannClassHead, EuclideanSGD),
        "off the manifold",
    ),
    (
        "grassmann_no_retraction",
        lambda: C.check_grassmann(GrassmannClassHead, GrassmannSGDNoRetraction),
        "off the manifold",
    ),
    ("dolg_wrong_norm", lambda: C.check_dolg(_fusion_module(fusion_wrong_norm)), "not orthogonal to f_g"),
    ("dolg_wrong_axis", lambda: C.check_dolg(_fusion_module(fusion_wrong_axis)), "not orthogonal to f_g"),
    (
        "dolg_local_without_attention",
        lambda: C.check_dolg_local_branch(LocalBranchWithoutAttention),
        "local branch differs",
    ),
    ("dolg_atrous_dilation_1", lambda: C.check_dolg_local_branch(LocalBranchUndilated), "multi-atrous block"),
]


@pytest.mark.parametrize(("name", "run", "why"), MUTANTS, ids=[m[0] for m in MUTANTS])
def test_mutant_fails_its_check(name: str, run: Callable[[], None], why: str) -> None:
    """Each mutant is rejected by the check of the property it breaks (``why`` is in the failure message)."""
    with pytest.raises(AssertionError, match=why):
        run()

r"""DOLG orthogonal fusion (Yang, Hoang, Ji, Kuen, Jiang, Yang, Wang, Luo, Hua, ICCV 2021, "DOLG: Single-Stage
Image Retrieval with Deep Orthogonal Fusion of Local and Global Features", arXiv 2108.02927; official code
``feymanpriv/DOLG`` (PaddlePaddle), PyTorch port ``dongkyunk/DOLG-pytorch`` ``model/dolg.py``).

A local feature map ``f_l ∈ R^{B×C×H×W}`` and a global descriptor ``f_g ∈ R^{B×C}`` are fused by removing from
every local vector its component along ``f_g``:

.. math::

    f_{\mathrm{proj}}(h,w) = \frac{\langle f_l(h,w), f_g\rangle}{\lVert f_g\rVert^2} f_g, \qquad
    f_{\mathrm{orth}}(h,w) = f_l(h,w) - f_{\mathrm{proj}}(h,w) \perp f_g,

and the output is ``concat(f_g broadcast over H×W, f_orth)`` (``[B, 2C, H, W]``), which the paper follows with
global average pooling and a fully connected layer (:class:`DOLGHead`). The optional local branch
(:class:`DOLGLocalBranch`) is the paper's multi-atrous block (dilations 3, 6, 9 plus an image-level GAP branch),
a 1×1 conv, BN, and a softplus attention map multiplying the L2-normalized local features.

Example:
    >>> import torch
    >>> from orthokit.align.dolg import OrthogonalFusion
    >>> fl, fg = torch.randn(2, 8, 3, 3, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    >>> out = OrthogonalFusion()(fl, fg)
    >>> out.shape
    torch.Size([2, 16, 3, 3])
    >>> float(torch.einsum("bchw,bc->bhw", out[:, 8:], fg).abs().max()) < 1e-12   # f_orth ⟂ f_g
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthokit.align.registry import ALIGN_LOSSES

__all__ = ["orthogonal_fusion", "OrthogonalFusion", "MultiAtrous", "DOLGLocalBranch", "DOLGHead"]


def _check(local: Tensor, global_: Tensor) -> None:
    if not isinstance(local, Tensor) or not isinstance(global_, Tensor):
        raise TypeError("DOLG fusion: local and global features must be tensors")
    if local.dim() != 4 or global_.dim() != 2:
        raise ValueError(
            f"DOLG fusion: local must be [B, C, H, W] and global [B, C], got {tuple(local.shape)} and "
            f"{tuple(global_.shape)}"
        )
    if local.shape[:2] != global_.shape:
        raise ValueError(
            f"DOLG fusion: batch/channel mismatch between local {tuple(local.shape)} and global "
            f"{tuple(global_.shape)}"
        )


def orthogonal_fusion(local: Tensor, global_: Tensor, *, concat: bool = True) -> Tensor:
    """DOLG's orthogonal fusion: ``concat(f_g, f_l − ⟨f_l, f_g⟩/‖f_g‖² f_g)`` along channels (``concat=False``
    returns only the orthogonal component ``[B, C, H, W]``). A zero global vector leaves the local map as is
    (the reference divides by zero there).

    Example:
        >>> o = orthogonal_fusion(torch.ones(1, 2, 1, 1), torch.tensor([[1.0, 0.0]]), concat=False)
        >>> o.flatten().tolist()
        [0.0, 1.0]
    """
    _check(local, global_)
    sq = (global_ * global_).sum(dim=1)  # ‖f_g‖²
    coef = (
        torch.einsum("bchw,bc->bhw", local, global_)
        / torch.where(sq > 0, sq, torch.ones_like(sq))[:, None, None]
    )
    orth = local - coef[:, None] * global_[:, :, None, None]
    if not concat:
        return orth
    return torch.cat([global_[:, :, None, None].expand_as(orth), orth], dim=1)


@ALIGN_LOSSES.register("dolg", aliases=("dolg_fusion", "orthogonal_fusion"), kind="module")
class OrthogonalFusion(nn.Module):
    """DOLG's orthogonal fusion module: ``forward(local [B,C,H,W], global [B,C]) -> [B, 2C, H, W]``
    (see :func:`orthogonal_fusion`). No parameters."""

    def forward(self, local: Tensor, global_: Tensor) -> Tensor:
        return orthogonal_fusion(local, global_)


class MultiAtrous(nn.Module):
    """DOLG's multi-atrous block: three dilated 3×3 convs (dilations ``rates``) and an image-level branch
    (GAP → 1×1 conv → ReLU → upsample to the input size), each ``out_channels // 4`` channels, concatenated.

    Example:
        >>> MultiAtrous(4, 8)(torch.randn(2, 4, 7, 7)).shape
        torch.Size([2, 8, 7, 7])
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = (3, 6, 9)) -> None:
        super().__init__()
        if out_channels % (len(rates) + 1):
            raise ValueError(
                f"MultiAtrous: out_channels={out_channels} must be divisible by {len(rates) + 1}"
            )
        c = out_channels // (len(rates) + 1)
        self.dilated = nn.ModuleList(nn.Conv2d(in_channels, c, 3, dilation=r, padding=r) for r in rates)
        self.image_conv = nn.Conv2d(in_channels, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        img = F.relu(self.image_conv(F.adaptive_avg_pool2d(x, 1)))
        img = F.interpolate(img, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([conv(x) for conv in self.dilated] + [img], dim=1)


class DOLGLocalBranch(nn.Module):
    """DOLG's local branch: multi-atrous → 1×1 conv → ReLU → 1×1 conv (no bias) → BN, then a softplus
    attention map (ReLU → 1×1 conv → softplus) multiplying the channel-L2-normalized features.

    Example:
        >>> DOLGLocalBranch(4, 8, hidden_channels=8)(torch.randn(2, 4, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 2048) -> None:
        super().__init__()
        self.multi_atrous = MultiAtrous(in_channels, hidden_channels)
        self.conv1 = nn.Conv2d(hidden_channels, out_channels, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.att_conv = nn.Conv2d(out_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        f = self.bn(self.conv2(F.relu(self.conv1(self.multi_atrous(x)))))
        att = F.softplus(self.att_conv(F.relu(f)))
        return F.normalize(f, dim=1) * att


class DOLGHead(nn.Module):
    """DOLG head on top of a backbone's two stages: local branch on the mid-level map, GeM pooling (p = 3, as
    the paper) + FC on the deep map for the global vector, orthogonal fusion, GAP over space, FC to the descriptor.

    Args:
        local_in: channels of the mid-level map (the local branch's input).
        global_in: channels of the deep map.
        channels: fused channel count ``C`` of both branches.
        out_dim: descriptor size.
        atrous: use :class:`DOLGLocalBranch` (default); ``False`` uses a single 1×1 conv as the local branch.
        hidden_channels: width of the multi-atrous block.
        gem_p: exponent of the generalized-mean pooling of the deep map (``1`` = average pooling).

    Example:
        >>> head = DOLGHead(4, 6, channels=8, out_dim=5, hidden_channels=8)
        >>> head(torch.randn(2, 4, 9, 9), torch.randn(2, 6, 3, 3)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        local_in: int,
        global_in: int,
        channels: int,
        out_dim: int,
        *,
        atrous: bool = True,
        hidden_channels: int = 2048,
        gem_p: float = 3.0,
    ) -> None:
        super().__init__()
        if not isinstance(gem_p, (int, float)) or not gem_p >= 1:
            raise ValueError(f"DOLGHead: gem_p must be >= 1, got {gem_p!r}")
        self.gem_p = float(gem_p)
        self.local = (
            DOLGLocalBranch(local_in, channels, hidden_channels)
            if atrous
            else nn.Conv2d(local_in, channels, 1)
        )
        self.global_fc = nn.Linear(global_in, channels)
        self.fuse = OrthogonalFusion()
        self.fc = nn.Linear(2 * channels, out_dim)

    def forward(self, local_map: Tensor, global_map: Tensor) -> Tensor:
        fl = self.local(local_map)
        p = self.gem_p
        fg = self.global_fc(global_map.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p))
        fused = self.fuse(fl, fg)
        return self.fc(fused.mean(dim=(2, 3)))

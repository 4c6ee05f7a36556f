"""Conformance suite of the orthogonality losses and heads (``ALIGN_LOSSES``).

Each registered method has a check family: a float64 ``gradcheck`` on tiny inputs, agreement with a closed form
computed independently (explicit loops / projection matrices in float64), and the method's defining property:

* ``opl``: zero at features that collapse per class onto mutually orthogonal directions (any scale), both terms
  at their optimum; with ``abs_negative`` never below zero.
* ``ebv``: ``max |cos| ≤ α`` of the stored class vectors; deterministic from the seed (not torch's global RNG).
* ``grassmann``: logits invariant to a rotation of each basis inside its subspace; bases orthonormal to 1e-6
  after many :class:`GrassmannSGD` steps (which also lower the loss).
* ``dolg``: the fused local part is orthogonal to the global vector (1e-6, float64) and the decomposition is
  exact; the local branch (multi-atrous block, BN, softplus attention) equals a float64 hand computation.

``tests/align/test_losses_mutants.py`` runs the same checks on broken variants and requires them to fail.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import orthokit.align.dolg  # noqa: F401  (registers)
import orthokit.align.ebv  # noqa: F401
import orthokit.align.grassmann  # noqa: F401
import orthokit.align.opl  # noqa: F401
from orthokit.align.grassmann import GrassmannSGD
from orthokit.align.registry import ALIGN_LOSSES

D64 = torch.float64


# ----------------------------------------------------------------------------------------------------- OPL
def _opl_reference(f: Tensor, y: Tensor, gamma: float, abs_negative: bool) -> float:
    """OPL by explicit loops over pairs, float64 (the formula of kahnchana/opl loss.py)."""
    n = f.shape[0]
    fn = [f[i].double() / f[i].double().norm() for i in range(n)]
    ps = pc = ns = nc = 0.0
    for i in range(n):
        for j in range(n):
            c = float(fn[i] @ fn[j])
            if int(y[i]) == int(y[j]):
                if i != j:
                    ps, pc = ps + c, pc + 1
            else:
                ns, nc = ns + (abs(c) if abs_negative else c), nc + 1
    return (1.0 - ps / (pc + 1e-6)) + gamma * ns / (nc + 1e-6)


def check_opl(cls: Callable[..., Any]) -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    # defining optimum: every class on its own orthogonal direction, arbitrary positive scales
    scales = torch.tensor([0.3, 2.0, 5.0, 0.7, 1.5, 9.0, 4.0], dtype=D64)[:, None]
    Q = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=D64))[0]
    opt = Q[y] * scales
    for ab in (False, True):
        val = float(cls(0.5, abs_negative=ab)(opt, y))
        assert abs(val) < 1e-6, f"opl(abs_negative={ab}) at orthogonal class directions = {val}, expected 0"
    f = torch.randn(7, 5, generator=g, dtype=D64, requires_grad=True)
    for ab in (False, True):
        loss = cls(0.5, abs_negative=ab)
        assert torch.autograd.gradcheck(lambda t, lo=loss: lo(t, y), (f,)), "opl: gradcheck failed"
        ref = _opl_reference(f.detach(), y, 0.5, ab)
        got = float(loss(f.detach(), y))
        assert abs(got - ref) < 1e-9, f"opl(abs_negative={ab}): {got} != closed form {ref}"
    # with |cos| on the negative pairs 0 is the minimum: random and adversarial batches stay >= 0
    for _ in range(5):
        r = torch.randn(7, 5, generator=g, dtype=D64)
        assert float(cls(0.5, abs_negative=True)(r, y)) >= -1e-9, "opl(abs_negative=True) went below 0"


# ----------------------------------------------------------------------------------------------------- EBV
def check_ebv(cls: Callable[..., Any]) -> None:
    alpha = 0.05
    torch.manual_seed(123)
    a = cls(12, 16, max_cos=alpha, seed=7, dtype=D64)
    E = a.basis.detach()
    assert E.shape == (12, 16), f"ebv: basis shape {tuple(E.shape)}"
    assert float((E.norm(dim=1) - 1).abs().max()) < 1e-9, "ebv: class vectors are not unit length"
    C = (E @ E.T).abs() - torch.eye(12, dtype=D64)
    mx = float(C.max())
    assert mx <= alpha, f"ebv: max |cos| {mx:.4f} exceeds its alpha {alpha}"
    torch.manual_seed(999)  # a different global RNG state must not matter
    b = cls(12, 16, max_cos=alpha, seed=7, dtype=D64)
    assert torch.equal(E, b.basis), "ebv: class vectors are not a function of the seed"
    c = cls(12, 16, max_cos=alpha, seed=8, dtype=D64)
    assert not torch.allclose(E, c.basis), "ebv: different seeds gave the same class vectors"
    # head: cosine logits over the temperature, closed form
    x = torch.randn(5, 16, dtype=D64, requires_grad=True)
    ref = (x.detach() / x.detach().norm(dim=1, keepdim=True)) @ E.T / a.tau
    assert torch.allclose(a(x.detach()), ref, atol=1e-12), "ebv: logits differ from cos(x, e_c)/tau"
    assert torch.autograd.gradcheck(lambda t: a(t), (x,)), "ebv: gradcheck failed"


# ----------------------------------------------------------------------------------------------- Grassmann
def _rand_orthogonal(k: int, g: torch.Generator) -> Tensor:
    return torch.linalg.qr(torch.randn(k, k, generator=g, dtype=D64))[0]


def check_grassmann(
    cls: Callable[..., Any], opt_cls: Callable[..., torch.optim.Optimizer] = GrassmannSGD
) -> None:
    g = torch.Generator().manual_seed(1)
    head = cls(6, 4, subdim=3, gamma=5.0, seed=0, dtype=D64)
    x = torch.randn(8, 6, generator=g, dtype=D64)
    # invariance to a rotation of each basis inside its subspace (the logit depends on the subspace only)
    with torch.no_grad():
        before = head(x)
    with torch.no_grad():
        R = torch.stack([_rand_orthogonal(3, g) for _ in range(4)])
        head.bases.copy_(head.bases @ R)
    err = float((head(x).detach() - before).abs().max())
    assert err < 1e-10, f"grassmann: logits changed by {err:.2e} under a basis rotation within the subspace"
    # closed form through the projection matrices P_c = S_c S_cᵀ: ‖P_c x̂‖ = ‖S_cᵀ x̂‖
    S = head.bases.detach()  # (rotated)
    xh = x / x.norm(dim=1, keepdim=True)
    ref = torch.stack([torch.linalg.vector_norm(xh @ (S[c] @ S[c].T), dim=1) for c in range(4)], 1) * 5.0
    assert torch.allclose(head(x), ref, atol=1e-12), "grassmann: logits differ from gamma*||P_c x̂||"
    # gradcheck w.r.t. features and bases
    xg = x.clone().requires_grad_(True)
    Sg = head.bases.detach().clone().requires_grad_(True)

    probe = copy.deepcopy(head)
    del probe.bases  # the bases become a plain input of the forward

    def fn(t: Tensor, s: Tensor) -> Tensor:
        probe.bases = s
        return probe(t)

    assert torch.autograd.gradcheck(fn, (xg, Sg)), "grassmann: gradcheck failed"
    # many Riemannian steps keep the bases orthonormal and lower the loss
    for dtype in (torch.float32, D64):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 10), cls(10, 4, subdim=3, gamma=10.0, seed=1)).to(
            dtype
        )
        xs, ys = torch.randn(64, 6, generator=g).to(dtype), torch.randint(0, 4, (64,), generator=g)
        opt = opt_cls(
            [{"params": model[0].parameters(), "grassmann": False}, {"params": [model[1].bases]}],
            lr=0.05,
            momentum=0.9,
        )
        losses = []
        for _ in range(150):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xs), ys)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        B = model[1].bases.detach().double()
        o = float((B.mT @ B - torch.eye(3, dtype=D64)).abs().max())
        assert o < 1e-6, (
            f"grassmann ({dtype}): bases off the manifold after 150 steps, max |SᵀS − I| = {o:.2e}"
        )
        assert losses[-1] < 0.5 * losses[0], f"grassmann ({dtype}): loss {losses[0]:.3f} -> {losses[-1]:.3f}"


# ---------------------------------------------------------------------------------------------------- DOLG
def check_dolg(cls: Callable[..., Any]) -> None:
    g = torch.Generator().manual_seed(2)
    fuse = cls()
    fl = torch.randn(3, 5, 4, 2, generator=g, dtype=D64) * 10.0
    fg = torch.randn(3, 5, generator=g, dtype=D64) * torch.tensor([0.01, 1.0, 50.0], dtype=D64)[:, None]
    out = fuse(fl, fg)
    assert out.shape == (3, 10, 4, 2), f"dolg: output shape {tuple(out.shape)}"
    assert torch.equal(out[:, :5], fg[:, :, None, None].expand(3, 5, 4, 2)), "dolg: first half is not f_g"
    orth = out[:, 5:]
    cos = torch.einsum("bchw,bc->bhw", orth, fg) / (fg.norm(dim=1)[:, None, None] * fl.norm(dim=1))
    assert float(cos.abs().max()) < 1e-6, (
        f"dolg: f_orth not orthogonal to f_g (max |cos| {float(cos.abs().max()):.2e})"
    )
    # exact decomposition: f_l − f_orth is parallel to f_g (rank-1 per position)
    par = fl - orth
    u = fg / fg.norm(dim=1, keepdim=True)
    resid = par - torch.einsum("bchw,bc->bhw", par, u)[:, None] * u[:, :, None, None]
    assert float(resid.abs().max()) < 1e-9 * float(fl.abs().max()), "dolg: removed component is not along f_g"
    # orthogonal part of a local vector already ⟂ f_g is the vector itself
    fl2 = orth.clone()
    assert torch.allclose(fuse(fl2, fg)[:, 5:], fl2, atol=1e-9), "dolg: fusion is not a projection"
    a = torch.randn(2, 3, 2, 2, generator=g, dtype=D64, requires_grad=True)
    b = torch.randn(2, 3, generator=g, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, q: fuse(p, q), (a, b)), "dolg: gradcheck failed"


# ------------------------------------------------------------------------------------- DOLG local branch
def _dilated_conv3x3_reference(x: Tensor, w: Tensor, b: Tensor, rate: int) -> Tensor:
    """3×3 conv with dilation ``rate`` and zero padding ``rate`` by explicit shifted sums over the 9 taps."""
    B, _, H, W = x.shape
    xp = torch.zeros(B, x.shape[1], H + 2 * rate, W + 2 * rate, dtype=x.dtype)
    xp[:, :, rate : rate + H, rate : rate + W] = x
    out = b[None, :, None, None].expand(B, -1, H, W).clone()
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i * rate : i * rate + H, j * rate : j * rate + W]
            out = out + torch.einsum("oc,bchw->bohw", w[:, :, i, j], patch)
    return out


def _conv1x1(x: Tensor, conv: torch.nn.Conv2d) -> Tensor:
    y = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0].detach(), x)
    return y if conv.bias is None else y + conv.bias.detach()[None, :, None, None]


def _dolg_local_reference(branch: torch.nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The DOLG local branch by hand in float64 (``dongkyunk/DOLG-pytorch`` ``model/dolg.py``): dilated 3×3
    convs at the paper's rates 3, 6, 9 and the image-level branch (GAP → 1×1 conv → ReLU, broadcast: a bilinear
    upsample of a 1×1 map is constant), concatenated; 1×1 conv → ReLU → 1×1 conv → BN (eval: running stats);
    ``softplus(1×1 conv(ReLU(f))) · f/‖f‖``. Returns (multi-atrous output, branch output)."""
    ma = branch.multi_atrous  # type: ignore[union-attr]
    parts = [
        _dilated_conv3x3_reference(x, c.weight.detach(), c.bias.detach(), rate)
        for c, rate in zip(ma.dilated, (3, 6, 9), strict=True)
    ]
    gap = _conv1x1(x.mean(dim=(2, 3), keepdim=True), ma.image_conv).clamp(min=0)
    parts.append(gap.expand(-1, -1, *x.shape[-2:]))
    atrous = torch.cat(parts, dim=1)
    h = _conv1x1(_conv1x1(atrous, branch.conv1).clamp(min=0), branch.conv2)  # type: ignore[arg-type]
    bn = branch.bn  # type: ignore[union-attr]
    f = (h - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var + bn.eps)[None, :, None, None]
    f = f * bn.weight.detach()[None, :, None, None] + bn.bias.detach()[None, :, None, None]
    att = torch.log1p(torch.exp(_conv1x1(f.clamp(min=0), branch.att_conv)))  # type: ignore[arg-type]
    return atrous, f / f.norm(dim=1, keepdim=True) * att


def check_dolg_local_branch(cls: Callable[..., Any]) -> None:
    """DOLG's local branch against :func:`_dolg_local_reference` (random weights, biases and BN statistics;
    an 11×10 map so every dilation reaches past the border), then a float64 gradcheck."""
    torch.manual_seed(3)
    branch = cls(3, 4, hidden_channels=8).to(D64).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for prm in branch.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g, dtype=D64) * 0.5)
        branch.bn.running_mean.copy_(torch.randn(4, generator=g, dtype=D64))
        branch.bn.running_var.copy_(torch.rand(4, generator=g, dtype=D64) + 0.5)
    x = torch.randn(2, 3, 11, 10, generator=g, dtype=D64)
    with torch.no_grad():
        atrous_ref, ref = _dolg_local_reference(branch, x)
        atrous, out = branch.multi_atrous(x), branch(x)
    err = float((atrous - atrous_ref).abs().max())
    assert err < 1e-10, (
        f"dolg: multi-atrous block differs from dilated convs at rates 3, 6, 9 + GAP by {err:.2e}"
    )
    err = float((out - ref).abs().max())
    assert err < 1e-10, (
        f"dolg: local branch differs from the reference (softplus attention × L2-normalized BN map) by {err:.2e}"
    )
    xs = torch.randn(1, 3, 4, 4, generator=g, dtype=D64, requires_grad=True)
    assert torch.autograd.gradcheck(branch, (xs,)), "dolg: local branch gradcheck failed"


def test_dolg_local_branch_matches_the_reference() -> None:
    from orthokit.align.dolg import DOLGLocalBranch

    check_dolg_local_branch(DOLGLocalBranch)


CHECKS: dict[str, Callable[[Any], None]] = {
    "opl": check_opl,
    "ebv": check_ebv,
    "grassmann": check_grassmann,
    "dolg": check_dolg,
}


def test_every_registered_loss_has_a_check() -> None:
    missing = sorted(set(ALIGN_LOSSES.names()) - set(CHECKS))
    assert not missing, f"ALIGN_LOSSES entries without a conformance check: {missing}"


def test_kinds_are_declared() -> None:
    for name in ALIGN_LOSSES.names():
        assert ALIGN_LOSSES.capabilities(name).get("kind") in {"loss", "head", "module"}, name


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_conformance(name: str) -> None:
    CHECKS[name](ALIGN_LOSSES.get(name))


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """These checks are many tiny ops: one thread avoids oversubscription stalls on a shared host."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

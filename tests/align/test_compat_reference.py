"""Closed-form checks of the compatible-training losses against hand-written float64 numpy, gradient checks, and
input validation (clear one-line errors, state untouched on failure)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from orthokit.align.bct import BCT, bct_influence_loss, synthesize_prototypes
from orthokit.align.bt2 import BT2
from orthokit.align.independent import Independent
from orthokit.align.lambda_compat import LambdaOrthogonal, cross_model_supcon
from orthokit.align.oca import OCA

D64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ numpy references (written from the formulas)
def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))


def ce(logits: np.ndarray, y: np.ndarray, smoothing: float = 0.0) -> float:
    lp = log_softmax(logits)
    nll = -lp[np.arange(len(y)), y]
    return float(((1 - smoothing) * nll + smoothing * (-lp.mean(axis=1))).mean())


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def supcon(anchors: np.ndarray, keys: np.ndarray, y: np.ndarray, tau: float) -> float:
    a, k = unit(anchors), unit(keys)
    out = []
    for i in range(len(y)):
        z = a[i] @ k.T / tau
        lp = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
        out.append(-lp[y == y[i]].mean())
    return float(np.mean(out))


def linear(x: np.ndarray, layer: nn.Linear) -> np.ndarray:
    out = x @ np_(layer.weight).T
    return out + np_(layer.bias) if layer.bias is not None else out


# ------------------------------------------------------------------ fixtures
N, DIN, FEAT, OLD, C = 12, 7, 6, 4, 5


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Linear]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, DIN, generator=g, dtype=D64)
    y = torch.arange(N) % C
    P = torch.randn(C, OLD, generator=g, dtype=D64)
    torch.manual_seed(seed)
    old = nn.Linear(DIN, OLD).double()
    return x, y, P, old


def backbone(seed: int = 1) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(DIN, FEAT).double()


@contextlib.contextmanager
def float64_default() -> Iterator[None]:
    """Build modules directly in float64 (an orthogonal parametrization created in float32 and cast afterwards
    is orthogonal only to float32 precision)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(D64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


# ------------------------------------------------------------------ BCT
def test_influence_loss_matches_float64_cross_entropy() -> None:
    x, y, P, _ = data()
    f = torch.randn(N, FEAT, dtype=D64)
    got = bct_influence_loss(f, P, y)
    assert abs(float(got) - ce(np_(f)[:, :OLD] @ np_(P).T, y.numpy())) < 1e-12
    got_s = bct_influence_loss(f, P, y, label_smoothing=0.1)
    assert abs(float(got_s) - ce(np_(f)[:, :OLD] @ np_(P).T, y.numpy(), 0.1)) < 1e-12


def test_bct_loss_matches_reference() -> None:
    x, y, P, old = data()
    m = BCT(
        backbone(), feat_dim=FEAT, n_classes=C, old_dim=OLD, old_prototypes=P, influence_weight=0.7
    ).double()
    f = linear(np_(x), m.backbone)
    want = ce(f @ np_(m.classifier.weight).T, y.numpy()) + 0.7 * ce(f[:, :OLD] @ np_(P).T, y.numpy())
    assert abs(float(m.loss(x, y).detach()) - want) < 1e-12
    assert m.compatible_features(x).shape == (N, OLD)


def test_synthesize_prototypes_against_manual_computation() -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(30, OLD, generator=g, dtype=D64)
    labels = torch.randint(0, C, (30,), generator=g)
    labels[:C] = torch.arange(C)  # every class present
    W = torch.randn(2, OLD, generator=g, dtype=D64)
    P = synthesize_prototypes(feats, labels, W, C)
    F_, L_ = np_(feats), labels.numpy()
    want = [np_(W)[0], np_(W)[1]]
    for c in range(2, C):
        mu = unit(F_[L_ == c]).mean(axis=0)
        want.append(mu / np.linalg.norm(mu))
    np.testing.assert_allclose(np_(P), np.stack(want), atol=1e-14)
    raw = synthesize_prototypes(feats, labels, W, C, normalize_features=False)
    mu = F_[L_ == 3].mean(axis=0)
    np.testing.assert_allclose(np_(raw)[3], mu / np.linalg.norm(mu), atol=1e-14)
    assert not np.allclose(np_(raw)[3], np_(P)[3], atol=1e-6)
    # None: every row synthesized; match_norm: new rows take the old rows' mean norm
    P_all = synthesize_prototypes(feats, labels, None, C)
    np.testing.assert_allclose(np.linalg.norm(np_(P_all), axis=1), 1.0, atol=1e-14)
    P_m = synthesize_prototypes(feats, labels, W, C, match_norm=True)
    np.testing.assert_allclose(
        np.linalg.norm(np_(P_m)[2:], axis=1), np.linalg.norm(np_(W), axis=1).mean(), atol=1e-12
    )


# ------------------------------------------------------------------ OCA
def test_oca_loss_matches_reference() -> None:
    x, y, P, _ = data()
    with float64_default():
        m = OCA(backbone(), feat_dim=FEAT, n_classes=C, old_dim=OLD, old_prototypes=P)
    r = linear(np_(x), m.backbone)
    f = unit(r)
    o = unit(f[:, :OLD])
    Q, b = np_(m.orth.weight), np_(m.orth.bias)
    np.testing.assert_allclose(Q @ Q.T, np.eye(FEAT), atol=1e-12)
    logits = (f @ Q.T + b) @ np_(m.classifier.weight).T
    Pn = np_(P)
    cos = (Pn[y.numpy()] * o).sum(axis=1) / np.linalg.norm(Pn[y.numpy()], axis=1)
    want = 5 * ce(logits, y.numpy(), 0.1) + 10 * ce(o @ Pn.T, y.numpy(), 0.1) + 5 * float((1 - cos).mean())
    assert abs(float(m.loss(x, y).detach()) - want) < 1e-12
    np.testing.assert_allclose(np_(m.compatible_features(x)), f[:, :OLD], atol=1e-14)
    # bias=False: the layer is a linear isometry, norms preserved exactly
    with float64_default():
        m0 = OCA(backbone(), feat_dim=FEAT, n_classes=C, old_dim=OLD, old_prototypes=P, bias=False)
    z = m0.classifier_features(x)
    np.testing.assert_allclose(np_(z.norm(dim=1)), 1.0, atol=1e-12)


# ------------------------------------------------------------------ BT²
def test_bt2_loss_matches_reference() -> None:
    x, y, P, old = data()
    torch.manual_seed(5)
    indep = nn.Linear(DIN, FEAT).double()
    k = 2
    with float64_default():
        m = BT2(
            backbone(),
            feat_dim=FEAT,
            n_classes=C,
            old_dim=OLD,
            old_prototypes=P,
            old_model=copy.deepcopy(old),
            extra_dims=k,
            independent_model=copy.deepcopy(indep),
        )
    r = linear(np_(x), m.backbone)
    b = unit(r)
    a = unit(linear(np.maximum(r, 0), m.old_branch))
    Op, Oo = np_(m.ortho_p.weight), np_(m.ortho_old.weight)
    z = np.concatenate([unit(a[:, :k]), (2.0 * b) @ Op.T], axis=1)
    h = z[:, :OLD] @ Oo.T
    new = np.concatenate([h, z[:, OLD:]], axis=1)
    hh, g, p = unit(h), unit(linear(np_(x), old)), unit(linear(np_(x), indep))
    yy = y.numpy()
    want = (
        ce(b @ np_(m.classifier.weight).T, yy, 0.1)
        + 10 * ce(hh @ np_(P).T, yy, 0.1)
        + 5 * (1 - float((g * hh).sum(axis=1).mean()))
        + 1 * (1 - float((p * b).sum(axis=1).mean()))
    )
    assert abs(float(m.loss(x, y).detach()) - want) < 1e-12
    np.testing.assert_allclose(np_(m.new_features(x)), new, atol=1e-13)
    assert new.shape == (N, FEAT + k)
    np.testing.assert_allclose(np_(m.compatible_features(x)), new[:, :OLD], atol=1e-13)
    # the basis transformations are isometries: ‖z‖² = 1 + C² exactly, and h keeps the norm of z[:, :OLD]
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), np.sqrt(1 + 4.0), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(h, axis=1), np.linalg.norm(z[:, :OLD], axis=1), atol=1e-12)


# ------------------------------------------------------------------ λ-orthogonal
def test_cross_model_supcon_matches_loop() -> None:
    x, y, _, _ = data()
    a, k = torch.randn(N, OLD, dtype=D64), torch.randn(N, OLD, dtype=D64)
    for tau in (0.1, 0.5):
        got = float(cross_model_supcon(a, k, y, temperature=tau))
        assert abs(got - supcon(np_(a), np_(k), y.numpy(), tau)) < 1e-12


def test_lambda_orthogonal_loss_matches_reference() -> None:
    x, y, P, old = data()
    m = LambdaOrthogonal(
        backbone(),
        feat_dim=FEAT,
        n_classes=C,
        old_dim=OLD,
        old_prototypes=P,
        old_model=copy.deepcopy(old),
        lam=0.2,
    ).double()
    with torch.no_grad():
        m.map.weight.mul_(1.5)  # leave the λ-ball so the penalty is active
    f = linear(np_(x), m.backbone)
    mapped = linear(f, m.map)
    W = np_(m.map.weight)
    s = np.linalg.svd(W, compute_uv=False)
    gap = np.sqrt(((s**2 - 1) ** 2).sum())
    yy = y.numpy()
    want = (
        ce(f @ np_(m.classifier.weight).T, yy)
        + supcon(mapped, linear(np_(x), old), yy, 0.5)
        + ce(mapped @ np_(P).T, yy)
        + max(0.0, gap - 0.2) ** 2
    )
    assert gap > 0.2
    assert abs(float(m.loss(x, y).detach()) - want) < 1e-10
    np.testing.assert_allclose(np_(m.compatible_features(x)), mapped, atol=1e-13)
    np.testing.assert_allclose(np_(m.new_features(x)), f, atol=1e-14)
    assert abs(float(m.orthogonality_gap()) - gap) < 1e-12


def test_lambda_train_backbone_false_keeps_alignment_off_the_backbone() -> None:
    x, y, P, old = data()
    kw = dict(feat_dim=FEAT, n_classes=C, old_dim=OLD, old_prototypes=P, old_model=copy.deepcopy(old))
    m = LambdaOrthogonal(backbone(), train_backbone=False, **kw).double()
    m.loss(x, y).backward()
    g_detached = m.backbone.weight.grad.clone()
    ce_only = Independent(backbone(), feat_dim=FEAT, n_classes=C, old_dim=OLD).double()
    ce_only.classifier.load_state_dict(m.classifier.state_dict())
    ce_only.loss(x, y).backward()
    torch.testing.assert_close(g_detached, ce_only.backbone.weight.grad, rtol=0, atol=1e-14)
    assert m.map.weight.grad is not None and float(m.map.weight.grad.abs().sum()) > 0


# ------------------------------------------------------------------ gradient checks
def _methods() -> list[tuple[str, nn.Module]]:
    _, _, P, old = data()
    kw = dict(feat_dim=FEAT, n_classes=C, old_dim=OLD, old_prototypes=P, old_model=copy.deepcopy(old))
    return [
        ("independent", Independent(backbone(), **kw)),
        ("bct", BCT(backbone(), **kw)),
        ("oca", OCA(backbone(), **kw)),
        (
            "bt2",
            BT2(backbone(), extra_dims=2, independent_model=copy.deepcopy(old.__class__(DIN, FEAT)), **kw),
        ),
        ("lambda_orthogonal", LambdaOrthogonal(backbone(), **kw)),
    ]


class _Loss(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.m.loss(x, y)


@pytest.mark.parametrize("idx", range(5), ids=["independent", "bct", "oca", "bt2", "lambda_orthogonal"])
def test_gradcheck_loss(idx: int) -> None:
    """Gradient of each whole loss w.r.t. the backbone's weights (the frozen old/independent targets depend on
    the input but not on these weights, so a finite-difference check in the input would not apply)."""
    name, m = _methods()[idx]
    m = m.double()
    if name == "lambda_orthogonal":
        with torch.no_grad():
            m.map.weight.mul_(1.3)  # the penalty branch is active too
    x, y, _, _ = data(2)
    x, y = x[:6], y[:6]
    wrap = _Loss(m)
    w0 = m.backbone.weight.detach().clone().requires_grad_(True)
    b0 = m.backbone.bias.detach().clone().requires_grad_(True)

    def f(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(wrap, {"m.backbone.weight": w, "m.backbone.bias": b}, (x, y))

    assert torch.autograd.gradcheck(f, (w0, b0), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------ validation
def test_clear_errors_and_untouched_state() -> None:
    x, y, P, old = data()
    kw = dict(feat_dim=FEAT, n_classes=C, old_dim=OLD)
    with pytest.raises(ValueError, match="needs old_prototypes"):
        BCT(backbone(), **kw)
    with pytest.raises(ValueError, match=r"old_prototypes must have shape \[n_classes, old_dim\]"):
        OCA(backbone(), old_prototypes=P[:, :2], **kw)
    bb = backbone()
    shared = nn.Sequential(bb)  # an "old model" sharing the backbone's parameters
    with pytest.raises(ValueError, match="shares parameters with backbone"):
        BCT(bb, old_prototypes=P, old_model=shared, **kw)
    assert all(p.requires_grad for p in bb.parameters()), "a failed constructor froze the backbone"
    with pytest.raises(ValueError, match="extra_dims=5 must be <= old_dim=4"):
        BT2(backbone(), old_prototypes=P, extra_dims=5, **kw)
    with pytest.raises(ValueError, match="feat_dim = old_dim \\+ k >= old_dim"):
        OCA(backbone(), old_prototypes=torch.randn(C, 8, dtype=D64), feat_dim=FEAT, n_classes=C, old_dim=8)
    with pytest.raises(ValueError, match="needs old_model .* or old_prototypes"):
        LambdaOrthogonal(backbone(), **kw)
    with pytest.raises(ValueError, match="label_smoothing must be < 1"):
        Independent(backbone(), label_smoothing=1.0, **kw)
    for cls in (BCT, OCA, BT2, LambdaOrthogonal):  # the shared check, in every method
        with pytest.raises(ValueError, match="label_smoothing must be < 1"):
            cls(backbone(), old_prototypes=P, label_smoothing=1.0, **kw)
    with pytest.raises(TypeError, match="influence_weight must be a real number"):
        BCT(backbone(), old_prototypes=P, influence_weight=True, **kw)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        LambdaOrthogonal(backbone(), old_prototypes=P, temperature=0.0, **kw)
    m = BCT(backbone(), old_prototypes=P, **kw).double()
    with pytest.raises(ValueError, match="1-D integer tensor"):
        m.loss(x, y.double())
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 5\)"):
        m.loss(x, y + 1)
    with pytest.raises(ValueError, match="labels y has 3 entries for a batch of 12"):
        m.loss(x, y[:3])
    wrong = BCT(nn.Linear(DIN, FEAT + 1).double(), old_prototypes=P, **kw)
    with pytest.raises(ValueError, match=r"backbone must return \[B=12, feat_dim=6\]"):
        wrong.new_features(x)
    with pytest.raises(ValueError, match="class 4 has no old feature"):
        synthesize_prototypes(torch.randn(4, OLD), torch.tensor([0, 1, 2, 3]), torch.randn(2, OLD), 5)
    with pytest.raises(ValueError, match="old_classifier_weight has 3 columns"):
        synthesize_prototypes(torch.randn(4, OLD), torch.tensor([0, 1, 2, 3]), torch.randn(2, 3), 4)

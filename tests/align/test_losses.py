"""Unit tests of the orthogonality losses and heads: input validation, closed forms, optimizer details."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from orthokit.align.dolg import DOLGHead, OrthogonalFusion, orthogonal_fusion
from orthokit.align.ebv import EquiangularBasisVectors, generate_ebv, max_abs_cosine, welch_bound
from orthokit.align.grassmann import (
    GrassmannClassHead,
    GrassmannSGD,
    grassmann_param_groups,
    grassmann_retract,
    tangent_projection,
)
from orthokit.align.opl import OrthogonalProjectionLoss, cross_entropy_with_opl, opl_terms
from orthokit.linalg import qr_basis

from .test_conformance_losses import _one_thread  # noqa: F401  (autouse fixture)

D64 = torch.float64


# ----------------------------------------------------------------------------------------------------- OPL
def test_opl_signed_negative_term_can_go_below_zero_like_the_reference() -> None:
    """Two classes on opposite directions: the released code's signed mean gives (1 − 1) + 0.5·(−1) = −0.5."""
    f, y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]), torch.tensor([0, 0, 1])
    assert float(OrthogonalProjectionLoss()(f, y)) == pytest.approx(-0.5, abs=1e-5)
    assert float(OrthogonalProjectionLoss(abs_negative=True)(f, y)) == pytest.approx(0.5, abs=1e-5)


def test_opl_terms_and_gamma() -> None:
    f, y = torch.randn(10, 4, dtype=D64), torch.randint(0, 3, (10,))
    s, d = opl_terms(f, y)
    assert float(OrthogonalProjectionLoss(2.0)(f, y)) == pytest.approx(float(1 - s + 2.0 * d), abs=1e-12)


def test_cross_entropy_with_opl_is_the_sum() -> None:
    logits, f, y = torch.randn(8, 3), torch.randn(8, 5), torch.randint(0, 3, (8,))
    ref = F.cross_entropy(logits, y) + 0.3 * OrthogonalProjectionLoss()(f, y)
    assert torch.allclose(cross_entropy_with_opl(logits, f, y, weight=0.3), ref)
    with pytest.raises(ValueError, match="weight"):
        cross_entropy_with_opl(logits, f, y, weight=-1.0)


@pytest.mark.parametrize(
    ("args", "err", "msg"),
    [
        ((torch.randn(4), torch.zeros(4, dtype=torch.long)), ValueError, "features"),
        ((torch.randn(4, 3), torch.zeros(5, dtype=torch.long)), ValueError, "labels"),
        ((torch.randn(4, 3), torch.zeros(4)), TypeError, "integer class ids"),
        ((torch.randn(4, 3).numpy(), torch.zeros(4, dtype=torch.long)), TypeError, "tensors"),
    ],
)
def test_opl_bad_inputs(args: Any, err: type[Exception], msg: str) -> None:
    with pytest.raises(err, match=msg):
        OrthogonalProjectionLoss()(*args)


def test_opl_bad_gamma() -> None:
    with pytest.raises(ValueError, match="gamma"):
        OrthogonalProjectionLoss(-1.0)
    with pytest.raises(TypeError, match="gamma"):
        OrthogonalProjectionLoss("0.5")  # type: ignore[arg-type]


def test_opl_training_orthogonalizes_class_means() -> None:
    """Minimizing OPL (abs variant) on free features drives the class means towards orthogonality."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(8)
    f = (torch.randn(32, 8, generator=g) + 3.0).requires_grad_(True)  # all in one orthant: |cos| ≈ 0.9
    opt = torch.optim.Adam([f], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        OrthogonalProjectionLoss(abs_negative=True)(f, y).backward()
        opt.step()
    means = F.normalize(torch.stack([f[y == c].mean(0) for c in range(4)]).detach(), dim=1)
    off = (means @ means.T - torch.eye(4)).abs().max()
    assert float(off) < 0.05


# ----------------------------------------------------------------------------------------------------- EBV
def test_welch_bound_values() -> None:
    assert welch_bound(5, 5) == 0.0
    assert welch_bound(4, 3) == pytest.approx(1 / 3)  # tetrahedron: |cos| = 1/3
    assert welch_bound(3, 2) == pytest.approx(0.5)  # three lines at 60°


def test_ebv_reaches_near_welch_bound_when_n_exceeds_dim() -> None:
    """20 vectors in R^10 (Welch bound 0.229): the paper's procedure reaches α = 0.3."""
    E, _ = generate_ebv(20, 10, max_cos=0.3, seed=0)
    assert welch_bound(20, 10) <= max_abs_cosine(E) <= 0.3


def test_ebv_refuses_alpha_below_welch_bound() -> None:
    with pytest.raises(ValueError, match="Welch bound"):
        EquiangularBasisVectors(20, 4, max_cos=0.1)


def test_ebv_unreached_alpha_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="after 3 steps"):
        generate_ebv(30, 8, max_cos=0.5, steps=3)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"n_classes": 1, "dim": 4}, "n_classes"),
        ({"n_classes": 3, "dim": 4, "max_cos": 1.5}, "max_cos"),
        ({"n_classes": 3, "dim": 4, "tau": 0.0}, "tau"),
        ({"n_classes": 3, "dim": 4, "lr": -1.0}, "lr"),
        ({"n_classes": 3, "dim": 4, "seed": -1}, "seed"),
    ],
)
def test_ebv_bad_arguments(kw: dict[str, Any], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        EquiangularBasisVectors(**kw)


def test_ebv_head_shapes_and_state_dict() -> None:
    ebv = EquiangularBasisVectors(5, 8, max_cos=0.01, seed=3)
    with pytest.raises(ValueError, match=r"\[batch, 8\]"):
        ebv(torch.randn(2, 7))
    sd = ebv.state_dict()
    assert set(sd) == {"basis"} and not list(ebv.parameters())
    other = EquiangularBasisVectors(5, 8, max_cos=0.01, seed=4)
    other.load_state_dict(sd)
    assert torch.equal(other.basis, ebv.basis)


def test_ebv_training_points_features_at_class_vectors() -> None:
    """A linear map trained with the EBV loss classifies a separable toy problem."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 6, generator=g) * 3
    y = torch.arange(4).repeat(25)
    x = centers[y] + 0.3 * torch.randn(100, 6, generator=g)
    ebv = EquiangularBasisVectors(4, 16, max_cos=0.01, seed=0)
    lin = torch.nn.Linear(6, 16)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        ebv.loss(lin(x), y).backward()
        opt.step()
    assert float((ebv(lin(x)).argmax(1) == y).float().mean()) == 1.0


# ------------------------------------------------------------------------------------------------ Grassmann
def test_exp_retraction_on_the_sphere_is_the_great_circle() -> None:
    """k = 1: Gr(d, 1) steps follow cos(t‖g‖) s + sin(t‖g‖) g/‖g‖ (closed form of the sphere's geodesic)."""
    s = F.normalize(torch.randn(5, 1, dtype=D64), dim=0)
    g = tangent_projection(s, torch.randn(5, 1, dtype=D64))
    t = 0.7
    ref = math.cos(t * float(g.norm())) * s + math.sin(t * float(g.norm())) * g / g.norm()
    assert torch.allclose(grassmann_retract(s, g, t, "exp"), ref, atol=1e-12)


@pytest.mark.parametrize("retraction", ["exp", "qr", "polar"])
def test_retractions_agree_to_first_order(retraction: str) -> None:
    S = qr_basis(torch.randn(7, 3, dtype=D64))
    T = tangent_projection(S, torch.randn(7, 3, dtype=D64))
    for h in (1e-3, 1e-4):
        N = grassmann_retract(S, T, h, retraction)
        assert float((N.T @ N - torch.eye(3, dtype=D64)).abs().max()) < 1e-12
        # the subspaces agree with S + hT up to O(h²): compare projection matrices
        Y = qr_basis(S + h * T)
        assert float((N @ N.T - Y @ Y.T).abs().max()) < 10 * h * h


def test_grassmann_sgd_first_step_matches_closed_form_with_momentum() -> None:
    """Two steps with momentum: the second direction is the tangent projection of μ G₁ + G₂ at the new point."""
    S0 = qr_basis(torch.randn(2, 6, 2, dtype=D64))
    p = torch.nn.Parameter(S0.clone())
    opt = GrassmannSGD([p], lr=0.1, momentum=0.5, reorth_every=0)
    G1, G2 = torch.randn(2, 6, 2, dtype=D64), torch.randn(2, 6, 2, dtype=D64)
    p.grad = G1.clone()
    opt.step()
    S1 = grassmann_retract(S0, tangent_projection(S0, G1), -0.1)
    assert torch.allclose(p.detach(), S1, atol=1e-12)
    p.grad = G2.clone()
    opt.step()
    S2 = grassmann_retract(S1, tangent_projection(S1, 0.5 * G1 + G2), -0.1)
    assert torch.allclose(p.detach(), S2, atol=1e-12)


def test_grassmann_sgd_plain_group_is_torch_sgd() -> None:
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(4, 3))
    b.data.copy_(a.data)
    ours = GrassmannSGD([{"params": [a], "grassmann": False}], lr=0.1, momentum=0.9, weight_decay=0.01)
    ref = torch.optim.SGD([b], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        g = torch.randn(4, 3)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, atol=1e-6)


def test_grassmann_sgd_non_finite_step_leaves_state_untouched() -> None:
    head = GrassmannClassHead(5, 2, subdim=2, seed=0)
    lin = torch.nn.Linear(3, 5)
    model = torch.nn.Sequential(lin, head)
    opt = GrassmannSGD(grassmann_param_groups(model), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bufs = {id(p): opt.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    head.bases.grad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        opt.step()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for p in model.parameters():
        assert torch.equal(opt.state[p]["momentum_buffer"], bufs[id(p)])


def test_grassmann_sgd_validation() -> None:
    with pytest.raises(ValueError, match="orthonormal"):
        GrassmannSGD([torch.nn.Parameter(torch.randn(5, 2) * 3)], lr=0.1)
    with pytest.raises(ValueError, match="k <= d"):
        GrassmannSGD([torch.nn.Parameter(torch.randn(2, 5))], lr=0.1)
    with pytest.raises(ValueError, match="retraction"):
        GrassmannSGD([torch.nn.Parameter(qr_basis(torch.randn(5, 2)))], lr=0.1, retraction="cayley")
    with pytest.raises(ValueError, match="lr"):
        GrassmannSGD([torch.nn.Parameter(qr_basis(torch.randn(5, 2)))], lr=-1.0)
    with pytest.raises(TypeError, match="nn.Module"):
        grassmann_param_groups([1, 2])  # type: ignore[arg-type]


def _orth_err(S: torch.Tensor) -> float:
    S = S.detach().double()
    return float((S.mT @ S - torch.eye(S.shape[-1], dtype=D64)).abs().max())


def test_grassmann_sgd_add_param_group_runs_the_constructor_checks() -> None:
    """A group added later gets the constructor's checks; a refused one leaves the optimizer as it was."""
    base = torch.nn.Parameter(qr_basis(torch.randn(6, 2)))
    opt = GrassmannSGD([base], lr=0.1, momentum=0.9)
    base.grad = torch.randn(6, 2)
    opt.step()
    groups_before = [dict(g) for g in opt.param_groups]
    state_before = {k: {n: torch.as_tensor(v).clone() for n, v in st.items()} for k, st in opt.state.items()}
    value_before = base.detach().clone()
    bad_cases: list[tuple[dict[str, Any], str]] = [
        (
            {"params": [torch.randn(6, 2) * 3]},
            r"^GrassmannSGD: Grassmann parameter 0 of group 1 .*orthonormal",
        ),
        ({"params": torch.full((6, 2), float("nan"))}, "orthonormal columns"),
        ({"params": [torch.randn(2, 5)]}, r"group 1 must be \[\.\.\., d, k\] with k <= d"),
        (
            {"params": [qr_basis(torch.randn(6, 2))], "retraction": "bogus"},
            r"param group 1: unknown retraction 'bogus'",
        ),
        ({"params": [qr_basis(torch.randn(6, 2))], "lr": -0.1}, r"param group 1: lr must be a number >= 0"),
        ({"params": [qr_basis(torch.randn(6, 2))], "momentum": float("nan")}, "momentum must be"),
        ({"params": [qr_basis(torch.randn(6, 2))], "reorth_every": 2.5}, "reorth_every must be an int"),
        ({"params": [qr_basis(torch.randn(6, 2))], "grassmann": "yes"}, "grassmann must be a bool"),
    ]
    for group, msg in bad_cases:
        keys = set(group)
        with pytest.raises(ValueError, match=msg) as info:
            opt.add_param_group(group)
        assert "\n" not in str(info.value)
        assert set(group) == keys  # the caller's dict is not filled in
        assert len(opt.param_groups) == 1 and opt.param_groups[0].keys() == groups_before[0].keys()
        assert all(opt.param_groups[0][k] is groups_before[0][k] for k in groups_before[0])
        assert list(opt.state) == list(state_before)
        for k, st in opt.state.items():
            assert st.keys() == state_before[k].keys()
            assert all(torch.equal(torch.as_tensor(v), state_before[k][n]) for n, v in st.items())
        assert torch.equal(base.detach(), value_before)
    with pytest.raises(TypeError, match="param group must be a dict"):
        opt.add_param_group([base])  # type: ignore[arg-type]
    # the same (non-orthonormal) tensor is fine in a plain group; a valid Grassmann group steps on the manifold
    plain = torch.nn.Parameter(torch.randn(6, 2) * 3)
    opt.add_param_group({"params": [plain], "grassmann": False})
    new = torch.nn.Parameter(qr_basis(torch.randn(3, 6, 2)))
    opt.add_param_group({"params": [new], "retraction": "qr"})
    assert [g["grassmann"] for g in opt.param_groups] == [True, False, True]
    assert opt.param_groups[2]["retraction"] == "qr" and opt.param_groups[2]["lr"] == 0.1
    for _ in range(5):
        for p in (base, plain, new):
            p.grad = torch.randn_like(p)
        opt.step()
    assert _orth_err(new) < 1e-5 and _orth_err(base) < 1e-5


def test_grassmann_sgd_constructor_checks_per_group_values() -> None:
    """Per-group overrides given to the constructor are range-checked too (they bypassed the checks before)."""
    S = torch.nn.Parameter(qr_basis(torch.randn(5, 2)))
    with pytest.raises(
        ValueError, match=r"^GrassmannSGD: param group 0: lr must be a number >= 0, got -1.0$"
    ):
        GrassmannSGD([{"params": [S], "lr": -1.0}], lr=0.1)
    with pytest.raises(ValueError, match="param group 1: unknown retraction 'cayley'"):
        GrassmannSGD(
            [{"params": [S]}, {"params": [torch.randn(3)], "grassmann": False, "retraction": "cayley"}],
            lr=0.1,
        )


def test_grassmann_head_validation_and_k1_is_abs_cosine() -> None:
    with pytest.raises(ValueError, match="subdim"):
        GrassmannClassHead(4, 3, subdim=5)
    with pytest.raises(ValueError, match="gamma"):
        GrassmannClassHead(4, 3, subdim=2, gamma=0)
    head = GrassmannClassHead(4, 3, subdim=1, gamma=1.0, seed=0, dtype=D64)
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        head(torch.randn(2, 5, dtype=D64))
    x = torch.randn(6, 4, dtype=D64)
    cos = F.normalize(x, dim=1) @ head.bases[:, :, 0].T
    assert torch.allclose(head(x), cos.abs(), atol=1e-12)


# ---------------------------------------------------------------------------------------------------- DOLG
def test_dolg_zero_global_keeps_local_and_bad_shapes() -> None:
    fl = torch.randn(2, 3, 2, 2)
    out = orthogonal_fusion(fl, torch.zeros(2, 3), concat=False)
    assert torch.equal(out, fl)
    with pytest.raises(ValueError, match="mismatch"):
        OrthogonalFusion()(fl, torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        OrthogonalFusion()(torch.randn(2, 3), torch.randn(2, 3))


@pytest.mark.parametrize("atrous", [True, False])
def test_dolg_head_trains(atrous: bool) -> None:
    torch.manual_seed(0)
    head = DOLGHead(3, 4, channels=8, out_dim=2, atrous=atrous, hidden_channels=8)
    xl, xg = torch.randn(16, 3, 6, 6), torch.randn(16, 4, 3, 3)
    y = (xl.mean((1, 2, 3)) > 0).long()
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(head(xl, xg), y)
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < first
    with pytest.raises(ValueError, match="gem_p"):
        DOLGHead(3, 4, channels=8, out_dim=2, gem_p=0.5)


# ------------------------------------------------------------------------------------ dtype and NaN/inf input
def _heads() -> dict[str, Any]:
    return {
        "GrassmannClassHead": GrassmannClassHead(6, 3, subdim=2, seed=0),
        "EBV": EquiangularBasisVectors(3, 6, max_cos=0.2, seed=0),
    }


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features_raise_a_one_line_error(bad: float) -> None:
    y = torch.tensor([0, 0, 1, 1])
    f = torch.randn(4, 6)
    f[2, 3] = bad
    with pytest.raises(ValueError, match=r"^OPL: features contain 1 non-finite value\(s\)") as info:
        OrthogonalProjectionLoss()(f, y)
    assert "\n" not in str(info.value)
    for name, head in _heads().items():
        with pytest.raises(ValueError, match=rf"^{name}: features contain 1 non-finite value\(s\)"):
            head(f)
        head.check_finite = False  # the opt-out: the NaN reaches the logits, as in plain torch
        assert not bool(torch.isfinite(head(f)).all())


def test_huge_finite_features_are_not_mistaken_for_non_finite() -> None:
    f, y = torch.tensor([[3e38, 0.0, 0, 0, 0, 0], [1e38, 1e-3, 0, 0, 0, 0]]), torch.tensor([0, 0])
    assert math.isfinite(
        float(OrthogonalProjectionLoss()(f, y))
    )  # no false alarm (the norms overflow to inf)
    for head in _heads().values():
        assert bool(torch.isfinite(head(f)).all())


def test_heads_reject_integer_and_mismatched_features_with_type_error() -> None:
    heads = _heads()
    for name, head in heads.items():
        with pytest.raises(TypeError, match=f"^{name}: features must be .*floating.*int64"):
            head(torch.ones(2, 6, dtype=torch.long))
    with pytest.raises(TypeError, match=r"features must be floating torch.float32 .* got torch.float64"):
        heads["GrassmannClassHead"](torch.randn(2, 6, dtype=D64))
    assert heads["EBV"](torch.randn(2, 6, dtype=D64)).dtype == D64  # EBV casts its fixed basis

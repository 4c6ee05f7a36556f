"""Selective Steering: the rotation against an explicit float64 rotation matrix (norm, angle, identity, group law),
the discriminative layer selection on planted states against a brute-force reference, and the calibrated hooks on
tiny HF models — each property with a mutant it must reject."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.steer._hooks import residual_layers
from orthokit.steer.angular import plane_angle
from orthokit.steer.directions import collect_residuals, mean_difference
from orthokit.steer.registry import STEERERS
from orthokit.steer.selective import (
    SelectiveSteering,
    class_alignment,
    norm_sites,
    plan_selective,
    select_layers,
    selective_steer,
    steer_norm_sites,
)

from ._models import tiny_model

D = 20


def _plane(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)


def _states(n: int = 150, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=torch.float64) * 3


def _rotation_matrix(v1: torch.Tensor, v2: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Float64 reference: Q diag(R_θ, I) Qᵀ with Q an explicit orthonormal frame whose first columns span the plane."""
    b1 = v1 / v1.norm()
    w = v2 - (v2 @ b1) * b1
    b2 = w / w.norm()
    Q, _ = torch.linalg.qr(torch.cat([b1[:, None], b2[:, None], torch.eye(D, dtype=torch.float64)], dim=1))
    Q = Q[:, :D]
    Q[:, 0], Q[:, 1] = b1, b2  # fix the QR column signs for the plane
    t = math.radians(angle_deg)
    R = torch.eye(D, dtype=torch.float64)
    R[:2, :2] = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
    return Q @ R @ Q.T


# ---- check functions and mutants ----------------------------------------------------------------------------------


def check_rotation(s: SelectiveSteering, h: torch.Tensor) -> None:
    out = s.edit(h)
    assert torch.allclose(out.norm(dim=-1), h.norm(dim=-1), rtol=0, atol=1e-10), "norm not preserved"
    diff = (
        torch.remainder(plane_angle(out, s.b1, s.b2) - plane_angle(h, s.b1, s.b2) - s.angle_deg + 180, 360)
        - 180
    )
    assert float(diff.abs().max()) < 1e-8, "in-plane angle not advanced by θ"


class ForgetsProjection(SelectiveSteering):
    """Mutant: h + V_θ h (the reference's 'old method' bug class: the −P h term dropped)."""

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        t = math.radians(self.angle_deg)
        c1, c2 = (h @ self.b1)[..., None], (h @ self.b2)[..., None]
        return (
            h
            + (math.cos(t) * c1 - math.sin(t) * c2) * self.b1
            + (math.sin(t) * c1 + math.cos(t) * c2) * self.b2
        )


class RotatesClockwise(SelectiveSteering):
    """Mutant: R_θᵀ instead of R_θ."""

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        return SelectiveSteering(self.b1, self.b2, angle_deg=-self.angle_deg).edit(h)


def select_by_separation(
    pos: torch.Tensor, neg: torch.Tensor, direction: torch.Tensor, k: int = 2
) -> list[int]:
    """Mutant selector: the k layers with the largest class-mean separation along the direction (not the sign rule)."""
    u = direction / direction.norm()
    sep = ((pos.mean(1) - neg.mean(1)) @ u).abs()
    return sorted(int(i) for i in torch.topk(sep, k).indices)


def select_unnormalized(pos: torch.Tensor, neg: torch.Tensor, direction: torch.Tensor) -> list[int]:
    """Mutant selector: signs of the raw mean projections (the reference normalizes every activation first)."""
    u = direction / direction.norm()
    a, b = pos @ u, neg @ u
    return [i for i in range(pos.shape[0]) if float(a[i].mean()) * float(b[i].mean()) < 0]


# ---- the rotation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 180.0, 300.0, -120.0])
def test_matches_rotation_matrix(angle: float) -> None:
    v1, v2 = _plane()
    h = _states()
    out = SelectiveSteering(v1, v2, angle_deg=angle).edit(h)
    assert torch.allclose(out, h @ _rotation_matrix(v1, v2, angle).T, atol=1e-12)


def test_norm_and_angle_and_mutants() -> None:
    v1, v2 = _plane()
    h = _states()
    for angle in (15.0, 90.0, 250.0):
        check_rotation(SelectiveSteering(v1, v2, angle_deg=angle), h)
    with pytest.raises(AssertionError, match="norm"):
        check_rotation(ForgetsProjection(v1, v2, angle_deg=90.0), h)
    with pytest.raises(AssertionError, match="angle"):
        check_rotation(RotatesClockwise(v1, v2, angle_deg=90.0), h)


def test_zero_angle_is_bitwise_identity_and_group_law() -> None:
    v1, v2 = _plane()
    h = _states()
    assert torch.equal(SelectiveSteering(v1, v2, angle_deg=0.0).edit(h), h)
    a, b = SelectiveSteering(v1, v2, angle_deg=40.0), SelectiveSteering(v1, v2, angle_deg=75.0)
    assert torch.allclose(b.edit(a.edit(h)), SelectiveSteering(v1, v2, angle_deg=115.0).edit(h), atol=1e-12)
    assert torch.allclose(SelectiveSteering(v1, v2, angle_deg=360.0).edit(h), h, atol=1e-12)
    assert not torch.allclose(ForgetsProjection(v1, v2, angle_deg=0.0).edit(h), h)


def test_registry_capabilities() -> None:
    caps = STEERERS.capabilities("selective")
    assert caps["norm_preserving"] is True and caps["kind"] == "rotation" and caps["needs_plane"] is True


# ---- layer selection ------------------------------------------------------------------------------------------------


def _planted(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """6 layers; classes on opposite sides of u only in layers 2 and 4; elsewhere both on the + side with a large gap."""
    g = torch.Generator().manual_seed(seed)
    L, n = 6, 40
    u = torch.zeros(D, dtype=torch.float64)
    u[0] = 1.0
    pos = torch.randn(L, n, D, generator=g, dtype=torch.float64)
    neg = torch.randn(L, n, D, generator=g, dtype=torch.float64)
    for layer in range(L):
        if layer in (2, 4):
            pos[layer, :, 0] += 3.0
            neg[layer, :, 0] -= 3.0
        else:
            pos[layer, :, 0] += 12.0
            neg[layer, :, 0] += 2.0
    return pos, neg, u


def check_selector(fn, pos: torch.Tensor, neg: torch.Tensor, u: torch.Tensor) -> None:  # noqa: ANN001
    assert fn(pos, neg, u) == [2, 4], "did not pick the planted discriminative layers"


def test_select_layers_picks_planted_layers_and_mutant() -> None:
    pos, neg, u = _planted()
    check_selector(select_layers, pos, neg, u)
    assert select_layers(pos, neg) == [2, 4]  # the reference's own feature direction (best candidate)
    with pytest.raises(AssertionError, match="planted"):
        check_selector(select_by_separation, pos, neg, u)


def test_class_alignment_normalizes_each_state_and_mutant() -> None:
    # one huge negative-projection outlier flips the raw mean but not the mean cosine
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(3, 10, D, generator=g, dtype=torch.float64) * 0.1
    pos[:, :, 0] += 1.0
    pos[:, 0, 0] = -500.0
    neg = torch.randn(3, 10, D, generator=g, dtype=torch.float64) * 0.1
    neg[:, :, 0] -= 1.0
    neg[1, :, 0] += 2.0  # layer 1: both classes on the + side
    u = torch.zeros(D, dtype=torch.float64)
    u[0] = 1.0
    ref = torch.zeros(3, 2, dtype=torch.float64)
    for layer in range(3):
        for c, x in enumerate((pos, neg)):
            ref[layer, c] = sum(float(r @ u) / float(r.norm()) for r in x[layer]) / x.shape[1]
    assert torch.allclose(class_alignment(pos, neg, u), ref, atol=1e-12)
    assert select_layers(pos, neg, u) == [0, 2]
    assert select_unnormalized(pos, neg, u) != [
        0,
        2,
    ]  # the mutant selector is rejected by the same expectation


def test_select_layers_errors() -> None:
    pos, neg, u = _planted()
    with pytest.raises(ValueError, match="agree on L and d"):
        select_layers(pos, neg[:3], u)
    with pytest.raises(ValueError, match=r"\[L, n, d\]"):
        select_layers(pos[0], neg[0], u)
    with pytest.raises(ValueError, match="direction"):
        select_layers(pos, neg, torch.zeros(D, dtype=torch.float64))
    bad = pos.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="pos_states"):
        select_layers(bad, neg, u)


# ---- calibrated hooks on a tiny HF model --------------------------------------------------------------------------


def _class_ids() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 128, (8, 6), generator=g), torch.randint(128, 256, (8, 6), generator=g)


@torch.no_grad()
def test_plan_matches_brute_force_calibration() -> None:
    model = tiny_model("gpt2", dtype=torch.float64)
    pos_ids, neg_ids = _class_ids()
    plan = plan_selective(model, pos_ids, neg_ids, sites="block")
    assert plan.sites == "block"
    pos = collect_residuals(model, pos_ids, positions="last")
    neg = collect_residuals(model, neg_ids, positions="last")
    cands = mean_difference(pos, neg)
    assert torch.allclose(plan.b1, cands[plan.feature_layer] / cands[plan.feature_layer].norm(), atol=1e-12)
    assert plan.layers == select_layers(pos, neg, plan.b1) and plan.layers


@torch.no_grad()
def test_selective_steer_hooks_preserve_norm_and_remove_cleanly() -> None:
    model = tiny_model("llama", dtype=torch.float64)
    pos_ids, neg_ids = _class_ids()
    ids = pos_ids[:2]
    before = model(ids).logits
    blocks = residual_layers(model)
    seen: dict[tuple[str, int], torch.Tensor] = {}

    def grab(key: str, i: int):  # noqa: ANN202
        def hook(_m, _a, out):  # noqa: ANN001, ANN202
            seen[(key, i)] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        return hook

    pre = [b.register_forward_hook(grab("in", i)) for i, b in enumerate(blocks)]
    handle = selective_steer(model, pos_ids, neg_ids, angle_deg=120.0, sites="block")
    post = [b.register_forward_hook(grab("out", i)) for i, b in enumerate(blocks)]
    try:
        steered = model(ids).logits
    finally:
        for h in pre + post:
            h.remove()
    assert handle.active
    assert float((steered - before).abs().max()) > 1e-3
    for i in range(len(blocks)):
        assert torch.allclose(seen[("out", i)].norm(dim=-1), seen[("in", i)].norm(dim=-1), atol=1e-10)
        assert not torch.allclose(seen[("out", i)], seen[("in", i)])  # both layers are discriminative here
    handle.remove()
    assert torch.equal(model(ids).logits, before)
    # an explicit layer override steers only that block: block 0's output is the unsteered one
    with selective_steer(model, pos_ids, neg_ids, angle_deg=120.0, layers=[1], sites="block"):
        post = [b.register_forward_hook(grab("override", i)) for i, b in enumerate(blocks)]
        try:
            model(ids)
        finally:
            for h in post:
                h.remove()
    assert torch.equal(seen[("override", 0)], seen[("in", 0)])
    assert not torch.allclose(seen[("override", 1)], seen[("in", 1)])
    assert torch.equal(model(ids).logits, before)


def test_bad_arguments() -> None:
    e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
    with pytest.raises(ValueError, match="needs a plane"):
        SelectiveSteering(e1)
    with pytest.raises(ValueError, match="parallel"):
        SelectiveSteering(e1, 3 * e1)
    with pytest.raises(ValueError, match="angle_deg"):
        SelectiveSteering(e1, e2, angle_deg=float("inf"))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        SelectiveSteering(e1, e2, angle_deg=5.0).edit(torch.zeros(4))


@torch.no_grad()
def test_norm_sites_follow_the_reference_and_preserve_norm() -> None:
    model = tiny_model("llama", dtype=torch.float64)
    sites = norm_sites(model)
    assert [(i, n) for i, n, _ in sites] == [
        (0, "input_layernorm"),
        (0, "post_attention_layernorm"),
        (1, "input_layernorm"),
        (1, "post_attention_layernorm"),
    ]
    pos_ids, neg_ids = _class_ids()
    plan = plan_selective(model, pos_ids, neg_ids, sites="norm")
    # brute force: last-token outputs of each norm module, reference selection rule
    outs: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(sites))}
    hs = [
        m.register_forward_hook(lambda _m, _a, o, i=i: outs[i].append(o[:, -1]))
        for i, (_, _, m) in enumerate(sites)
    ]
    try:
        model(pos_ids)
        model(neg_ids)
    finally:
        for h in hs:
            h.remove()
    pos = torch.stack([outs[i][0] for i in range(len(sites))])
    neg = torch.stack([outs[i][1] for i in range(len(sites))])
    assert plan.layers == select_layers(pos, neg, plan.b1) and plan.layers
    ids = pos_ids[:2]
    before = model(ids).logits
    site = sites[plan.layers[0]][2]
    seen: list[torch.Tensor] = []
    pre = site.register_forward_hook(lambda _m, _a, o: seen.append(o.clone()))
    handle = selective_steer(model, pos_ids, neg_ids, angle_deg=90.0, sites="norm")
    post = site.register_forward_hook(lambda _m, _a, o: seen.append(o.clone()))
    try:
        steered = model(ids).logits
    finally:
        pre.remove()
        post.remove()
        handle.remove()
    assert float((steered - before).abs().max()) > 1e-3
    assert torch.allclose(seen[1].norm(dim=-1), seen[0].norm(dim=-1), atol=1e-10) and not torch.allclose(
        seen[1], seen[0]
    )
    assert torch.equal(model(ids).logits, before)
    with pytest.raises(ValueError, match="sites"):
        plan_selective(model, pos_ids, neg_ids, sites="attn")
    with pytest.raises(ValueError, match="normalization sites"):
        selective_steer(model, pos_ids, neg_ids, angle_deg=90.0, sites="norm", layers=[7])


@torch.no_grad()
def test_steer_norm_sites_with_angular_follows_reference_sites() -> None:
    from orthokit.steer.angular import AngularSteering

    model = tiny_model("gpt_neox", dtype=torch.float64)
    ids = _class_ids()[0][:2]
    before = model(ids).logits
    g = torch.Generator().manual_seed(4)
    s = AngularSteering(
        torch.randn(64, generator=g, dtype=torch.float64),
        torch.randn(64, generator=g, dtype=torch.float64),
        angle_deg=200.0,
    )
    sites = norm_sites(model)
    seen: dict[tuple[str, int], torch.Tensor] = {}
    pre = [
        m.register_forward_hook(lambda _m, _a, o, i=i: seen.__setitem__(("in", i), o.clone()))
        for i, (_, _, m) in enumerate(sites)
    ]
    handle = steer_norm_sites(model, s)
    post = [
        m.register_forward_hook(lambda _m, _a, o, i=i: seen.__setitem__(("out", i), o.clone()))
        for i, (_, _, m) in enumerate(sites)
    ]
    try:
        steered = model(ids).logits
    finally:
        for h in pre + post:
            h.remove()
        handle.remove()
    assert float((steered - before).abs().max()) > 1e-3
    for i in range(len(sites)):
        assert torch.allclose(seen[("out", i)], s.edit(seen[("in", i)]), atol=1e-12)
    assert torch.equal(model(ids).logits, before)
    with pytest.raises(ValueError, match="normalization sites"):
        steer_norm_sites(model, s, sites=[9])
    with pytest.raises(TypeError, match="Steerer"):
        steer_norm_sites(model, "angular")  # type: ignore[arg-type]


@torch.no_grad()
def test_default_sites_are_the_references_normalization_outputs() -> None:
    """The reference (knoveleng/steering) reads and steers the normalization outputs: that is the default."""
    model = tiny_model("llama", dtype=torch.float64)
    pos_ids, neg_ids = _class_ids()
    plan = plan_selective(model, pos_ids, neg_ids)
    explicit = plan_selective(model, pos_ids, neg_ids, sites="norm")
    assert plan.sites == "norm" and plan.layers == explicit.layers and torch.equal(plan.b1, explicit.b1)
    assert plan.site_names == [f"block {i}: {n}" for i, n, _ in norm_sites(model)]
    with selective_steer(model, pos_ids, neg_ids, angle_deg=90.0) as handle:
        assert len(handle._handles) == len(plan.layers)  # one hook per selected norm site, none on the blocks
        assert all(not b._forward_hooks for b in residual_layers(model))


@pytest.mark.parametrize(
    ("layers", "exc", "match"),
    [
        ([1.7], TypeError, "layers must hold ints"),
        (["1"], TypeError, "layers must hold ints"),
        ([True], TypeError, "layers must hold ints"),
        ("1", TypeError, "sequence of ints"),
        (1, TypeError, "sequence of ints"),
        ([], ValueError, "empty"),
        ([0, 0], ValueError, "twice"),
        ([5], ValueError, "decoder blocks"),
    ],
)
def test_selective_steer_rejects_bad_layers_like_steer(layers: object, exc: type, match: str) -> None:
    model = tiny_model("llama", dtype=torch.float64)
    pos_ids, neg_ids = _class_ids()
    with pytest.raises(exc, match=match):
        selective_steer(model, pos_ids, neg_ids, 90.0, layers=layers, sites="block")  # type: ignore[arg-type]
    assert all(not b._forward_hooks for b in residual_layers(model))  # nothing registered
    with pytest.raises(exc, match=match.replace("decoder blocks", "normalization sites")):
        selective_steer(model, pos_ids, neg_ids, 90.0, layers=layers)  # type: ignore[arg-type]
    assert all(not m._forward_hooks for _, _, m in norm_sites(model))


class _BadEdit(SelectiveSteering):
    """Mutant steerers: wrong shape, wrong dtype, NaN from finite states."""

    def __init__(self, mode: str) -> None:
        super().__init__(torch.eye(64, dtype=torch.float64)[0], torch.eye(64, dtype=torch.float64)[1], 30.0)
        self.mode = mode

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "shape":
            return h[..., :-1]
        if self.mode == "dtype":
            return h.float()
        return h * float("nan")


@pytest.mark.parametrize(("mode", "match"), [("shape", "shape"), ("dtype", "dtype"), ("nan", "NaN")])
@torch.no_grad()
def test_norm_site_hooks_check_the_edit_like_steer(mode: str, match: str) -> None:
    model = tiny_model("llama", dtype=torch.float64)
    ids = _class_ids()[0][:2]
    with steer_norm_sites(model, _BadEdit(mode), sites=[1]):
        with pytest.raises(ValueError, match=match) as info:
            model(ids)
    assert "norm site 0:post_attention_layernorm" in str(info.value)


def test_steer_norm_sites_refuses_a_wrong_length_direction_before_registering() -> None:
    model = tiny_model("llama")
    mods = [m for _, _, m in norm_sites(model)]
    n0 = [len(m._forward_hooks) for m in mods]
    with pytest.raises(ValueError, match=r"direction has length 32 .* hidden size 64"):
        steer_norm_sites(model, SelectiveSteering(torch.randn(32), torch.randn(32), angle_deg=30.0))
    assert [len(m._forward_hooks) for m in mods] == n0  # nothing registered
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))  # the model still runs


@pytest.mark.parametrize("sites", ["norm", "block"])
def test_plan_in_train_mode_is_the_eval_plan_and_restores_the_mode(sites: str) -> None:
    """Calibration runs in eval mode (GPT-2 has dropout 0.1): two calls agree with each other and with the plan of
    the same model in eval mode; every module's training flag is restored."""
    model = tiny_model("gpt2", dtype=torch.float64)
    pos_ids, neg_ids = _class_ids()
    ref = plan_selective(model, pos_ids, neg_ids, sites=sites)  # eval-mode reference
    model.train()
    model.transformer.h[0].eval()  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    p1 = plan_selective(model, pos_ids, neg_ids, sites=sites)
    p2 = plan_selective(model, pos_ids, neg_ids, sites=sites)
    assert [m.training for m in model.modules()] == flags
    for p in (p1, p2):
        assert torch.equal(p.b1, ref.b1) and torch.equal(p.b2, ref.b2)
        assert p.layers == ref.layers and torch.equal(p.alignment, ref.alignment)

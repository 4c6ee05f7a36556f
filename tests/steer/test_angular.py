"""Angular Steering: closed-form float64 reference, norm preservation, target angle, identity, adaptive mask, the
paper's PCA plane against scikit-learn, hooks on tiny HF models — each property with a mutant it must reject."""

from __future__ import annotations

import math

import pytest
import torch

from orthokit.steer._hooks import residual_layers, steer
from orthokit.steer.angular import AngularSteering, orthonormal_plane, plane_angle, steering_plane
from orthokit.steer.registry import STEERERS

from ._models import tiny_ids, tiny_model

D = 24


def _plane(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(D, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)


def _states(n: int = 200, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, D, generator=g, dtype=torch.float64)
        * torch.rand(n, 1, generator=g, dtype=torch.float64)
        * 5
    )


def _reference(h: torch.Tensor, v1: torch.Tensor, v2: torch.Tensor, angle_deg: float) -> torch.Tensor:
    """Closed form in an explicit orthonormal frame: coordinates (x1, x2, rest) -> (r cos θ, r sin θ, rest)."""
    b1 = v1 / v1.norm()
    w = v2 - (v2 @ b1) * b1
    b2 = w / w.norm()
    out = torch.empty_like(h)
    t = math.radians(angle_deg)
    for i, row in enumerate(h):
        x1, x2 = float(row @ b1), float(row @ b2)
        rest = row - x1 * b1 - x2 * b2
        r = math.hypot(x1, x2)
        out[i] = rest + r * math.cos(t) * b1 + r * math.sin(t) * b2
    return out


# ---- check functions (the mutants below must fail them) -------------------------------------------------------


def check_norm_preserved(s: AngularSteering, h: torch.Tensor) -> None:
    out = s.edit(h)
    assert torch.allclose(out.norm(dim=-1), h.norm(dim=-1), rtol=0, atol=1e-10), "norm not preserved"


def check_target_angle(s: AngularSteering, h: torch.Tensor) -> None:
    out = s.edit(h)
    ang = plane_angle(out, s.b1, s.b2)
    diff = torch.remainder(ang - s.angle_deg + 180.0, 360.0) - 180.0
    assert float(diff.abs().max()) < 1e-9, "in-plane angle is not the target"
    rest_in = h - (h @ s.b1)[:, None] * s.b1 - (h @ s.b2)[:, None] * s.b2
    rest_out = out - (out @ s.b1)[:, None] * s.b1 - (out @ s.b2)[:, None] * s.b2
    assert torch.allclose(rest_in, rest_out, atol=1e-10), "out-of-plane component changed"


class ForgetsOutOfPlane(AngularSteering):
    """Mutant: returns only the rotated in-plane part."""

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        r = torch.sqrt((h @ self.b1) ** 2 + (h @ self.b2) ** 2)[..., None]
        t = math.radians(self.angle_deg)
        return r * (math.cos(t) * self.b1 + math.sin(t) * self.b2)


class SkipsGramSchmidt(AngularSteering):
    """Mutant: uses the raw unit second direction (not orthogonalized against b1)."""

    def __init__(self, direction: torch.Tensor, second: torch.Tensor, angle_deg: float) -> None:
        super().__init__(direction, second, angle_deg, adaptive=False)
        self.b2 = second / second.norm()


class SquaresTheNorm(AngularSteering):
    """Mutant: ‖Ph‖ as sqrt(c1² + c2²) (overflows to inf at 1e20 and underflows at 1e-25 in float32)."""

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.b1.to(h), self.b2.to(h)
        c1, c2 = h @ b1, h @ b2
        r = torch.sqrt(c1 * c1 + c2 * c2)
        t = math.radians(self.angle_deg)
        tgt = math.cos(t) * b1 + math.sin(t) * b2
        return h - c1[..., None] * b1 - c2[..., None] * b2 + r[..., None] * tgt


def check_norm_at_extreme_scales(s: AngularSteering) -> None:
    """float32 states of norm 1e20 and 1e-25: finite rows, norm kept to 1e-6 relative (measured in float64)."""
    g = torch.Generator().manual_seed(3)
    base = torch.randn(16, s.dim, generator=g, dtype=torch.float64)
    base = base / base.norm(dim=-1, keepdim=True)
    for scale in (1e20, 1e-25):
        h = (base * scale).float()
        out = s.edit(h)
        assert bool(torch.isfinite(out).all()), f"non-finite output at scale {scale:g}"
        n0, n1 = h.double().norm(dim=-1), out.double().norm(dim=-1)
        err = float(((n1 - n0).abs() / n0).max())
        assert err <= 1e-6, f"norm changed by {err:.3g} (relative) at scale {scale:g}"


class AddsInsteadOfSets(AngularSteering):
    """Mutant: adds the target direction (activation addition) instead of replacing the in-plane part."""

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        t = math.radians(self.angle_deg)
        return h + h.norm(dim=-1, keepdim=True) * (math.cos(t) * self.b1 + math.sin(t) * self.b2)


# ---- tests ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 37.5, 90.0, 180.0, 271.0, -45.0])
def test_matches_closed_form_reference(angle: float) -> None:
    v1, v2 = _plane()
    h = _states()
    out = AngularSteering(v1, v2, angle_deg=angle, adaptive=False).edit(h)
    assert torch.allclose(out, _reference(h, v1, v2, angle), atol=1e-12)


def test_norm_and_angle_properties_and_mutants() -> None:
    v1, v2 = _plane()
    h = _states()
    for angle in (0.0, 60.0, 200.0):
        s = AngularSteering(v1, v2, angle_deg=angle, adaptive=False)
        check_norm_preserved(s, h)
        check_target_angle(s, h)
        check_norm_preserved(AngularSteering(v1, v2, angle_deg=angle), h)  # the adaptive default
    with pytest.raises(AssertionError, match="norm"):
        check_norm_preserved(ForgetsOutOfPlane(v1, v2, angle_deg=60.0), h)
    with pytest.raises(AssertionError, match="norm"):
        check_norm_preserved(SkipsGramSchmidt(v1, v2, angle_deg=60.0), h)
    with pytest.raises(AssertionError, match="norm"):
        check_norm_preserved(AddsInsteadOfSets(v1, v2, angle_deg=60.0), h)
    with pytest.raises(AssertionError, match="out-of-plane|angle"):
        check_target_angle(ForgetsOutOfPlane(v1, v2, angle_deg=60.0), h + 0.0)
    with pytest.raises(AssertionError, match="angle"):
        check_target_angle(AddsInsteadOfSets(v1, v2, angle_deg=60.0), h)


@pytest.mark.parametrize("adaptive", [True, False])
def test_norm_kept_at_extreme_float32_scales_and_mutant(adaptive: bool) -> None:
    v1, v2 = _plane()
    s = AngularSteering(v1.float(), v2.float(), angle_deg=100.0, adaptive=adaptive)
    check_norm_at_extreme_scales(s)
    with pytest.raises(AssertionError, match="non-finite|norm changed"):
        check_norm_at_extreme_scales(SquaresTheNorm(v1.float(), v2.float(), angle_deg=100.0, adaptive=False))


def test_current_angle_is_identity_and_mutant() -> None:
    v1, v2 = _plane()
    b1, b2 = orthonormal_plane(v1, v2)
    g = torch.Generator().manual_seed(5)
    rest = torch.randn(D, generator=g, dtype=torch.float64)
    rest = rest - (rest @ b1) * b1 - (rest @ b2) * b2
    phi = 123.0
    h = (3.0 * (math.cos(math.radians(phi)) * b1 + math.sin(math.radians(phi)) * b2) + rest)[None]
    assert torch.allclose(AngularSteering(v1, v2, angle_deg=phi).edit(h), h, atol=1e-12)
    assert not torch.allclose(AddsInsteadOfSets(v1, v2, angle_deg=phi).edit(h), h, atol=1e-6)


def test_adaptive_rotates_only_aligned_states() -> None:
    v1, v2 = _plane()
    h = _states()
    s = AngularSteering(v1, v2, angle_deg=150.0, adaptive=True)
    out = s.edit(h)
    aligned = (h @ s.b1) > 0
    assert 0 < int(aligned.sum()) < h.shape[0]
    assert torch.equal(out[~aligned], h[~aligned])
    assert torch.allclose(out[aligned], _reference(h[aligned], v1, v2, 150.0), atol=1e-12)
    # a non-adaptive steerer changes the non-aligned states too (so the mask test can fail)
    off = AngularSteering(v1, v2, angle_deg=150.0, adaptive=False)
    assert not torch.allclose(off.edit(h)[~aligned], h[~aligned])


def test_default_is_the_official_codes_adaptive_mode() -> None:
    """The official generation scripts default to adaptive_mode=1: so does the registered method."""
    v1, v2 = _plane()
    h = _states()
    for s in (
        AngularSteering(v1, v2, angle_deg=150.0),
        STEERERS.get("angular")(v1, v2, angle_deg=150.0),
        AngularSteering.from_candidates(torch.stack([v1, v2, v1 + v2]), angle_deg=150.0),
    ):
        assert s.adaptive is True
        aligned = (h @ s.b1) > 0
        assert 0 < int(aligned.sum()) < h.shape[0]
        assert torch.equal(s.edit(h)[~aligned], h[~aligned])


def test_steering_plane_matches_reference_recipe_and_sklearn() -> None:
    pytest.importorskip("sklearn")
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(2)
    base = torch.randn(D, generator=g, dtype=torch.float64)
    C = base + 0.6 * torch.randn(9, D, generator=g, dtype=torch.float64)
    C[3] = torch.randn(D, generator=g, dtype=torch.float64) * 4  # an outlier layer
    p = steering_plane(C)
    U = C / C.norm(dim=1, keepdim=True)
    mean_sims = torch.tensor([[float(U[i] @ U[j]) for j in range(len(U))] for i in range(len(U))]).mean(dim=1)
    assert p.feature_layer == int(mean_sims.argmax())
    assert torch.allclose(p.b1, U[p.feature_layer], atol=1e-12)
    pc = torch.from_numpy(PCA(n_components=1).fit(U.numpy()).components_[0])
    w = pc - (pc @ p.b1) * p.b1
    assert abs(abs(float(w @ p.b2)) / float(w.norm()) - 1.0) < 1e-10
    assert abs(float(p.b1 @ p.b2)) < 1e-12 and abs(float(p.b2.norm()) - 1.0) < 1e-12
    s = AngularSteering.from_candidates(C, angle_deg=30.0)
    assert torch.allclose(s.b1, p.b1) and torch.allclose(s.b2, p.b2)


def test_registry_capabilities() -> None:
    caps = STEERERS.capabilities("angular")
    assert caps["norm_preserving"] is True and caps["kind"] == "rotation" and caps["needs_plane"] is True
    assert STEERERS.get("angular") is AngularSteering and AngularSteering.norm_preserving


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@torch.no_grad()
def test_hook_changes_outputs_preserves_norm_and_removal_restores(family: str) -> None:
    model = tiny_model(family, dtype=torch.float64)
    ids = tiny_ids(2, 6)
    before = model(ids).logits
    g = torch.Generator().manual_seed(0)
    v1, v2 = (
        torch.randn(64, generator=g, dtype=torch.float64),
        torch.randn(64, generator=g, dtype=torch.float64),
    )
    block = residual_layers(model)[0]
    seen: dict[str, torch.Tensor] = {}

    def grab(key: str):  # noqa: ANN202
        def hook(_m, _a, out):  # noqa: ANN001, ANN202
            seen[key] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        return hook

    h_before = block.register_forward_hook(grab("in"))
    handle = steer(model, "angular", direction=v1, second=v2, angle_deg=135.0, layers=[0])
    h_after = block.register_forward_hook(grab("out"))
    try:
        steered = model(ids).logits
    finally:
        h_before.remove()
        h_after.remove()
    assert float((steered - before).abs().max()) > 1e-3
    assert torch.allclose(seen["out"].norm(dim=-1), seen["in"].norm(dim=-1), atol=1e-10)
    handle.remove()
    handle.remove()  # idempotent
    assert torch.equal(model(ids).logits, before)


def test_half_precision_states_keep_dtype() -> None:
    v1, v2 = _plane()
    h = _states().to(torch.bfloat16)
    out = AngularSteering(v1.float(), v2.float(), angle_deg=45.0).edit(h)
    assert out.dtype == torch.bfloat16 and out.shape == h.shape


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"second": None}, ValueError, "needs a plane"),
        ({"second": "x"}, TypeError, "second"),
        ({"second": torch.tensor([2.0, 0.0, 0.0])}, ValueError, "parallel"),
        ({"second": torch.tensor([0.0, 1.0])}, ValueError, "shape"),
        ({"second": torch.tensor([0.0, 1.0, 0.0]), "angle_deg": float("nan")}, ValueError, "angle_deg"),
        ({"second": torch.tensor([0.0, 1.0, 0.0]), "angle_deg": "90"}, TypeError, "angle_deg"),
        ({"second": torch.tensor([0.0, 1.0, 0.0]), "adaptive": 1}, TypeError, "adaptive"),
    ],
)
def test_bad_arguments(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        AngularSteering(torch.tensor([1.0, 0.0, 0.0]), **kwargs)


def test_bad_direction_and_states() -> None:
    e = torch.tensor([0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="direction"):
        AngularSteering(torch.tensor([float("nan"), 0.0, 0.0]), e)
    with pytest.raises(ValueError, match="non-zero"):
        AngularSteering(torch.zeros(3), e)
    s = AngularSteering(torch.tensor([1.0, 0.0, 0.0]), e, angle_deg=10.0)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        s.edit(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="floating"):
        s.edit(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="candidates"):
        steering_plane(torch.randn(1, 5))
    with pytest.raises(ValueError, match=r"candidates\[1\]"):
        steering_plane(torch.stack([torch.randn(5), torch.zeros(5)]))

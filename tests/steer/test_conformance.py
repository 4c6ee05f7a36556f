"""Conformance suite of the steering family: every name in STEERERS is built from FACTORIES and checked.

For all methods: shape and dtype preserved (float32/float64/bfloat16, several batch shapes); the input is not
modified in place; the identity configuration (strength 0, angle 0, or a state already at the target angle /
already orthogonal to the ablated direction) is the identity; steering a tiny Llama changes its logits and
removing the hooks leaves it bit-identical. For methods registered ``norm_preserving``: ``‖edit(h)‖ = ‖h‖`` per row
to 1e-12 *relative* on float64 states of many shapes and scales 1e-3..1e3 (hypothesis; exact methods are exact to
rounding). By capability (``kind``): a ``"projection"`` or ``"rotation"`` method acts only in its subspace (the
direction, or the plane for ``needs_plane``) — the component of ``edit(h)`` orthogonal to it equals that of ``h``
and a state orthogonal to it is returned unchanged (1e-12 relative); an ``"additive"`` method translates — ``edit(h)
− h`` is the same vector for every state. The class attribute must agree with the registry capability.

A new method cannot escape: ``test_every_registered_method_has_a_factory`` fails until FACTORIES has its entry
(and, for a non-additive method, the subspace it acts in). Mutants (a rotation rescaled by 1 + 1e-3 or 1 + 1e-7
that still claims norm preservation, a rotation that negates the out-of-plane part, an addition whose "zero"
strength adds 1e-6, an addition that scales with the state, an edit that changes dtype, an in-place edit) must be
rejected by the same check functions.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from orthokit.steer._hooks import Steerer, steer
from orthokit.steer.registry import STEERERS

from ._models import HIDDEN, tiny_ids, tiny_model

# importing the method modules registers them (the package __init__ re-exports are the integrator's job); a module
# that exists but fails to import fails here
for _mod in ("ablation", "addition", "angular", "selective", "cylindrical", "function_vectors", "lens"):
    if importlib.util.find_spec(f"orthokit.steer.{_mod}") is not None:
        importlib.import_module(f"orthokit.steer.{_mod}")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _vec(d: int, seed: int) -> Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _plane(d: int, seed: int) -> tuple[Tensor, Tensor]:
    """Orthonormal (b1, b2) by Gram–Schmidt of two random vectors (float64)."""
    a, b = _vec(d, seed), _vec(d, seed + 1)
    b1 = a / a.norm()
    b2 = b - (b @ b1) * b1
    return b1, b2 / b2.norm()


@dataclass(frozen=True)
class Factory:
    """How to build a method for the suite.

    ``strong(d, seed)``: a configuration that visibly steers (for the model check). ``identity(d, seed, h)``:
    ``(steerer, states)`` such that ``steerer.edit(states) == states`` (states derived from random ``h``).
    ``basis(d, seed)``: for ``"projection"``/``"rotation"`` methods, the subspace ``strong(d, seed)`` acts in.
    """

    strong: Callable[[int, int], Steerer]
    identity: Callable[[int, int, Tensor], tuple[Steerer, Tensor]]
    #: orthonormal rows [k, d] spanning the subspace ``strong(d, seed)`` acts in (None for additive methods)
    basis: Callable[[int, int], Tensor] | None = None


def _angular_identity(d: int, seed: int, h: Tensor) -> tuple[Steerer, Tensor]:
    b1, b2 = _plane(d, seed)
    theta = 50.0
    s = STEERERS.get("angular")(b1 * 3.0, b2 + 0.5 * b1, angle_deg=theta)
    # states whose in-plane part already sits at angle θ: out-of-plane part of h + ρ (cos θ b1 + sin θ b2)
    out_of_plane = h - (h @ b1)[..., None] * b1 - (h @ b2)[..., None] * b2
    rho = h.norm(dim=-1, keepdim=True)
    t = math.radians(theta)
    return s, out_of_plane + rho * (math.cos(t) * b1 + math.sin(t) * b2)


def _ablation_identity(d: int, seed: int, h: Tensor) -> tuple[Steerer, Tensor]:
    r = _vec(d, seed)
    u = r / r.norm()
    return STEERERS.get("ablation")(r), h - (h @ u)[..., None] * u


FACTORIES: dict[str, Factory] = {
    "addition": Factory(
        strong=lambda d, s: STEERERS.get("addition")(_vec(d, s), alpha=8.0),
        identity=lambda d, s, h: (STEERERS.get("addition")(_vec(d, s), alpha=0.0), h),
    ),
    "ablation": Factory(
        strong=lambda d, s: STEERERS.get("ablation")(_vec(d, s)),
        identity=_ablation_identity,
        basis=lambda d, s: (_vec(d, s) / _vec(d, s).norm())[None],
    ),
    "angular": Factory(
        strong=lambda d, s: STEERERS.get("angular")(*_plane(d, s), angle_deg=120.0),
        identity=_angular_identity,
        basis=lambda d, s: torch.stack(_plane(d, s)),
    ),
    "selective": Factory(
        strong=lambda d, s: STEERERS.get("selective")(*_plane(d, s), angle_deg=120.0),
        identity=lambda d, s, h: (STEERERS.get("selective")(*_plane(d, s), angle_deg=0.0), h),
        basis=lambda d, s: torch.stack(_plane(d, s)),
    ),
    "cylindrical": Factory(
        strong=lambda d, s: STEERERS.get("cylindrical")(_vec(d, s), _vec(d, s + 7), length=8.0, penalty=0.3),
        identity=lambda d, s, h: (STEERERS.get("cylindrical")(_vec(d, s), _vec(d, s + 7), length=0.0), h),
    ),
}


# ----------------------------------------------------------------------------------------------- check functions
def _rel_rows(diff: Tensor, ref: Tensor) -> float:
    """max over rows of ``‖diff‖ / ‖ref‖`` (rows with ``ref = 0`` compare ``‖diff‖`` to 0 exactly)."""
    if not diff.numel():
        return 0.0
    num, den = diff.norm(dim=-1), ref.norm(dim=-1)
    rel = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), num * math.inf)
    return float(torch.nan_to_num(rel, nan=0.0).max())


def check_norm_preserving(steerer: Steerer, h: Tensor) -> None:
    """``‖edit(h)‖ = ‖h‖`` row by row to 1e-12 relative (float64 ``h``; scale-free, so tiny states count too)."""
    out = steerer.edit(h)
    n0, n1 = h.norm(dim=-1), out.norm(dim=-1)
    err = _rel_rows((n1 - n0)[..., None], n0[..., None])
    assert err <= 1e-12, (
        f"{steerer!r} claims norm preservation but changes a row norm by {err:.3g} (relative)"
    )


def check_acts_only_in(steerer: Steerer, h: Tensor, basis: Tensor) -> None:
    """The part of ``edit(h)`` orthogonal to span(``basis``) is that of ``h``, and states ⟂ span are fixed.

    For a projection (the ablated direction) or a rotation in a plane: nothing outside that subspace may move.
    1e-12 relative to each row's norm (float64).
    """
    q = basis.to(h)

    def perp(x: Tensor) -> Tensor:
        return x - (x @ q.T) @ q

    err = _rel_rows(perp(steerer.edit(h)) - perp(h), h)
    assert err <= 1e-12, f"{steerer!r} changes the component outside its subspace by {err:.3g} (relative)"
    outside = perp(h)  # relative to ‖h‖: a row of h inside the subspace leaves only rounding noise here
    err = _rel_rows(steerer.edit(outside) - outside, h)
    assert err <= 1e-12, f"{steerer!r} moves a state orthogonal to its subspace by {err:.3g} (relative)"


def check_translation(steerer: Steerer, h: Tensor) -> None:
    """An additive method moves every state by the same vector: ``edit(h) − h`` is constant over rows."""
    flat = h.reshape(-1, h.shape[-1])
    delta = steerer.edit(flat) - flat
    scale = max(float(flat.norm(dim=-1).max()), float(delta.norm(dim=-1).max()), 1e-300)
    err = float((delta - delta[:1]).norm(dim=-1).max()) / scale
    assert err <= 1e-12, (
        f"{steerer!r} is registered additive but its shift varies between states by {err:.3g}"
    )


def check_shape_dtype(steerer: Steerer, d: int) -> None:
    """Same shape and dtype out, for several batch shapes and dtypes."""
    g = torch.Generator().manual_seed(11)
    for shape in [(d,), (3, d), (2, 5, d)]:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            h = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
            out = steerer.edit(h)
            assert out.shape == h.shape, f"{steerer!r}: shape {tuple(h.shape)} -> {tuple(out.shape)}"
            assert out.dtype == h.dtype, f"{steerer!r}: dtype {h.dtype} -> {out.dtype}"
            assert bool(torch.isfinite(out).all()), f"{steerer!r}: non-finite output"


def check_not_inplace(steerer: Steerer, h: Tensor) -> None:
    """``edit`` leaves its input unchanged."""
    before = h.clone()
    steerer.edit(h)
    assert torch.equal(h, before), f"{steerer!r} modified its input in place"


def check_identity(steerer: Steerer, h: Tensor) -> None:
    """The identity configuration returns the states unchanged (float64, 1e-12 relative to each row's norm)."""
    out = steerer.edit(h)
    err = _rel_rows(out - h, h)
    assert err <= 1e-12, f"{steerer!r}: the identity configuration moves states by {err:.3g}"


def check_model_hooks(model: nn.Module, steerer: Steerer) -> None:
    """Steering changes the logits; after removal the model is bit-identical to before."""
    ids = tiny_ids()
    with torch.no_grad():
        ref = model(ids).logits.clone()
        with steer(model, steerer):
            steered = model(ids).logits
        after = model(ids).logits
    assert float((steered - ref).abs().max()) > 1e-3, f"{steerer!r} did not change the logits"
    assert torch.equal(after, ref), f"{steerer!r}: the model is not bit-identical after removing the hooks"


# ------------------------------------------------------------------------------------------------------- tests
def test_every_registered_method_has_a_factory() -> None:
    missing = [n for n in STEERERS.names() if n not in FACTORIES]
    assert not missing, f"add a factory for {missing} to FACTORIES in tests/steer/test_conformance.py"
    assert {"addition", "ablation"} <= set(STEERERS.names())
    no_basis = [
        n
        for n in STEERERS.names()
        if STEERERS.capabilities(n)["kind"] != "additive" and not FACTORIES[n].basis
    ]
    assert not no_basis, f"give the factories of {no_basis} the subspace they act in (basis=...)"


@pytest.mark.parametrize("name", STEERERS.names())
def test_class_attributes_match_the_registry(name: str) -> None:
    cls = STEERERS.get(name)
    assert issubclass(cls, Steerer)
    assert cls.name == name
    assert cls.norm_preserving is STEERERS.capabilities(name)["norm_preserving"]
    assert STEERERS.capabilities(name)["kind"] in ("additive", "projection", "rotation")
    assert isinstance(STEERERS.capabilities(name)["needs_plane"], bool)


@pytest.mark.parametrize("name", STEERERS.names())
def test_shape_dtype_inplace_identity(name: str) -> None:
    f = FACTORIES[name]
    for d in (2, 7, HIDDEN):
        s = f.strong(d, d)
        check_shape_dtype(s, d)
        check_not_inplace(s, torch.randn(4, d, dtype=torch.float64))
        h = torch.randn(3, 6, d, generator=torch.Generator().manual_seed(d + 1000), dtype=torch.float64) * 5.0
        ident, states = f.identity(d, d, h)
        check_identity(ident, states)


@pytest.mark.parametrize("name", STEERERS.names(norm_preserving=True))
@settings(max_examples=25, deadline=None)
@given(
    d=st.sampled_from([2, 3, 8, 33, HIDDEN]),
    batch=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    log_scale=st.floats(-3.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_norm_preserving_methods_keep_every_row_norm(
    name: str, d: int, batch: list[int], log_scale: float, seed: int
) -> None:
    s = FACTORIES[name].strong(d, seed)
    h = torch.randn((*batch, d), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    check_norm_preserving(s, h * 10.0**log_scale)


@pytest.mark.parametrize("name", STEERERS.names())
def test_methods_act_as_their_kind_promises(name: str) -> None:
    """Projection/rotation: nothing outside the direction/plane moves; additive: one shift for every state."""
    f = FACTORIES[name]
    kind = STEERERS.capabilities(name)["kind"]
    for d in (2, 7, HIDDEN):
        g = torch.Generator().manual_seed(d + 1000)  # not the seed of the factory's vectors
        for scale in (1e-3, 1.0, 1e3):
            h = torch.randn(3, 6, d, generator=g, dtype=torch.float64) * scale
            if kind == "additive":
                check_translation(f.strong(d, d), h)
            else:
                assert f.basis is not None
                check_acts_only_in(f.strong(d, d), h, f.basis(d, d))


@pytest.mark.parametrize("name", STEERERS.names())
def test_hooks_steer_and_removal_is_bit_identical(name: str) -> None:
    check_model_hooks(_llama(), FACTORIES[name].strong(HIDDEN, 5))


_MODEL: list[nn.Module] = []


def _llama() -> nn.Module:
    if not _MODEL:
        _MODEL.append(tiny_model("llama"))
    return _MODEL[0]


# ----------------------------------------------------------------------------------------------------- mutants
class RescaledRotation(Steerer):
    """Rotation by θ in a plane, then a (1 + eps) rescale; claims norm preservation."""

    name = "mutant_rotation"
    norm_preserving = True

    def __init__(self, b1: Tensor, b2: Tensor, angle_deg: float, eps: float = 1e-3) -> None:
        self.b1, self.b2, self.t, self.eps = b1, b2, math.radians(angle_deg), eps

    def edit(self, h: Tensor) -> Tensor:
        b1, b2 = self.b1.to(h), self.b2.to(h)
        c1, c2 = (h @ b1)[..., None], (h @ b2)[..., None]
        c, s = math.cos(self.t), math.sin(self.t)
        rot = h + ((c - 1) * c1 - s * c2) * b1 + (s * c1 + (c - 1) * c2) * b2
        return rot * (1.0 + self.eps)


class FlipOut(RescaledRotation):
    """Rotation by θ in the plane that also negates the out-of-plane part when θ ≠ 0: norm preserving, identity at
    θ = 0, right shape and dtype, steers the model — only the acts-only-in-its-plane check catches it."""

    name = "mutant_flipout"

    def __init__(self, b1: Tensor, b2: Tensor, angle_deg: float) -> None:
        super().__init__(b1, b2, angle_deg, eps=0.0)

    def edit(self, h: Tensor) -> Tensor:
        out = super().edit(h)
        if self.t == 0.0:
            return out
        b1, b2 = self.b1.to(h), self.b2.to(h)
        inplane = (h @ b1)[..., None] * b1 + (h @ b2)[..., None] * b2
        return out - 2.0 * (h - inplane)


class LeakyZeroAddition(Steerer):
    """Activation addition whose alpha=0 still adds 1e-6 along the direction."""

    name = "mutant_addition"

    def __init__(self, r: Tensor) -> None:
        self.r = r / r.norm()

    def edit(self, h: Tensor) -> Tensor:
        return h + 1e-6 * self.r.to(h)


class ScaledAddition(Steerer):
    """Claims to be additive but adds ``α (1 + 1e-9 ‖h‖) r̂``: the shift depends on the state."""

    name = "mutant_scaled_addition"

    def __init__(self, r: Tensor) -> None:
        self.r = r / r.norm()

    def edit(self, h: Tensor) -> Tensor:
        return h + 4.0 * (1.0 + 1e-9 * h.norm(dim=-1, keepdim=True)) * self.r.to(h)


class DtypeLeak(Steerer):
    name = "mutant_dtype"

    def edit(self, h: Tensor) -> Tensor:
        return h.double() * 1.0


class InPlace(Steerer):
    name = "mutant_inplace"

    def edit(self, h: Tensor) -> Tensor:
        return h.mul_(1.5)


def test_mutants_are_rejected() -> None:
    d = 16
    b1, b2 = _plane(d, 0)
    plane = torch.stack([b1, b2])
    h = torch.randn(5, 3, d, generator=torch.Generator().manual_seed(101), dtype=torch.float64)
    for scale in (1e-3, 1.0, 1e3):
        check_norm_preserving(
            RescaledRotation(b1, b2, 70.0, eps=0.0), h * scale
        )  # the unmutated rotation passes
        check_acts_only_in(RescaledRotation(b1, b2, 70.0, eps=0.0), h * scale, plane)
        with pytest.raises(AssertionError, match="changes a row norm by 0.001"):
            check_norm_preserving(RescaledRotation(b1, b2, 70.0), h * scale)
        with pytest.raises(AssertionError, match="changes a row norm by 1e-07"):
            check_norm_preserving(RescaledRotation(b1, b2, 70.0, eps=1e-7), h * scale)
    # FlipOut passes every other check of the suite...
    flip = FlipOut(b1, b2, 120.0)
    check_norm_preserving(flip, h)
    check_identity(FlipOut(b1, b2, 0.0), h)
    check_shape_dtype(flip, d)
    check_not_inplace(flip, h.clone())
    check_model_hooks(_llama(), FlipOut(*_plane(HIDDEN, 5), 120.0))
    # ...and is rejected by the capability check
    with pytest.raises(AssertionError, match="changes the component outside its subspace"):
        check_acts_only_in(flip, h, plane)
    with pytest.raises(AssertionError, match="identity configuration moves"):
        check_identity(LeakyZeroAddition(b1), h)
    with pytest.raises(AssertionError, match="identity configuration moves"):
        check_identity(
            LeakyZeroAddition(b1), h * 1e3
        )  # relative, not absolute: caught at any scale below 1e6
    check_translation(STEERERS.get("addition")(b1, alpha=4.0), h * 1e3)
    with pytest.raises(AssertionError, match="shift varies between states"):
        check_translation(ScaledAddition(b1), h * 1e3)
    with pytest.raises(AssertionError, match="dtype"):
        check_shape_dtype(DtypeLeak(), d)
    with pytest.raises(AssertionError, match="in place"):
        check_not_inplace(InPlace(), h.clone())

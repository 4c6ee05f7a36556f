r"""Angular Steering: rotate the residual stream's component in a fixed 2-D plane to a target angle.

Source: H. M. Vu, T. M. Nguyen, "Angular Steering: Behavior Control via Rotation in Activation Space",
NeurIPS 2025 (arXiv 2510.26243); official code github.com/lone17/angular-steering
(``vllm_angular_steering.py::AngularSteeringOperator``, ``pytorch_pure/extract_directions.py``).

With an orthonormal plane basis ``b₁`` (the feature direction) and ``b₂`` and ``P = b₁b₁ᵀ + b₂b₂ᵀ``,
the reference rule sets the in-plane part of every state to the target angle ``θ`` (measured from ``b₁``
towards ``b₂``) while keeping its length and leaving the out-of-plane part untouched:

.. math::

    h' = h - P h + \lVert P h\rVert\,(\cos\theta\, b_1 + \sin\theta\, b_2).

Since ``h − Ph ⟂ plane`` and ``cosθ b₁ + sinθ b₂`` is a unit vector in the plane, ``‖h'‖ = ‖h‖`` exactly.
``θ = 0`` moves every state onto the feature direction, ``θ = 180°`` onto its opposite. By default the
steerer is the *adaptive* rule of the official code (``adaptive_mode=1``, the default of its generation
scripts): only states with ``⟨h, b₁⟩ > 0`` are rotated, the others pass through unchanged; ``adaptive=False``
(the reference's ``adaptive_mode=0``) rotates every state. ``‖Ph‖`` is computed as ``hypot(⟨h,b₁⟩, ⟨h,b₂⟩)``,
so it neither overflows nor underflows where the squares would.

The plane: ``b₁`` is the feature direction; the reference builds ``b₂`` as the first principal component
of the per-layer candidate directions (unit difference-in-means directions of every layer), orthogonalized
against ``b₁``; ``b₁`` itself is the candidate with the highest mean cosine similarity to all candidates.
:func:`steering_plane` implements that recipe; :func:`orthonormal_plane` takes any two directions.

Example:
    >>> import torch
    >>> from orthokit.steer.angular import AngularSteering
    >>> b1, b2 = torch.eye(4, dtype=torch.float64)[:2]
    >>> s = AngularSteering(b1, b2, angle_deg=90.0)
    >>> h = torch.tensor([[3.0, 0.0, 0.0, 4.0]], dtype=torch.float64)
    >>> s.edit(h)                       # in-plane part (3, 0) turned to 90°: (0, 3); last coordinate kept
    tensor([[0., 3., 0., 4.]], dtype=torch.float64)
    >>> float(s.edit(h).norm()) == float(h.norm())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from orthokit.linalg._checks import check_finite, compute_dtype
from orthokit.steer._hooks import Steerer
from orthokit.steer.registry import STEERERS

__all__ = [
    "AngularSteering",
    "SteeringPlane",
    "check_angle",
    "check_states",
    "check_vector",
    "orthonormal_plane",
    "plane_angle",
    "steering_plane",
]


def check_vector(v: Any, name: str) -> Tensor:
    """Return ``v`` if it is a finite, non-zero, real floating 1-D tensor; clear one-line error otherwise."""
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if v.is_complex() or not v.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {v.dtype}")
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector [d], got shape {tuple(v.shape)}")
    check_finite(v, name)
    if float(v.detach().double().norm()) == 0.0:
        raise ValueError(f"{name} must be non-zero")
    return v


def check_states(h: Any, d: int, name: str = "h") -> Tensor:
    """Return ``h`` if it is a real floating tensor ``[..., d]``; clear one-line error otherwise."""
    if not isinstance(h, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(h).__name__}")
    if h.is_complex() or not h.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {h.dtype}")
    if h.dim() == 0 or h.shape[-1] != d:
        raise ValueError(f"{name} must have shape [..., {d}], got {tuple(h.shape)}")
    return h


def check_angle(angle_deg: Any, name: str = "angle_deg") -> float:
    """Return ``angle_deg`` as a finite float (degrees); ``TypeError``/``ValueError`` otherwise."""
    if isinstance(angle_deg, bool) or not isinstance(angle_deg, (int, float)):
        raise TypeError(f"{name} must be a real number of degrees, got {type(angle_deg).__name__}")
    a = float(angle_deg)
    if not math.isfinite(a):
        raise ValueError(f"{name} must be finite, got {angle_deg}")
    return a


def orthonormal_plane(first: Tensor, second: Tensor) -> tuple[Tensor, Tensor]:
    """Orthonormal basis ``(b₁, b₂)`` of ``span(first, second)`` by Gram–Schmidt, ``b₁ ∥ first``.

    Computed in float64 and returned in ``first``'s dtype. ``ValueError`` if the two directions are
    (numerically) parallel: the plane would not be defined.

    Example:
        >>> b1, b2 = orthonormal_plane(torch.tensor([2.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]))
        >>> b1.tolist(), b2.tolist()
        ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    """
    check_vector(first, "direction")
    check_vector(second, "second")
    if first.shape != second.shape:
        raise ValueError(
            f"second must have the shape of direction {tuple(first.shape)}, got {tuple(second.shape)}"
        )
    f = first.detach().double()
    s = second.detach().double().to(f.device)
    b1 = f / f.norm()
    r = s - (s @ b1) * b1
    if float(r.norm()) <= 1e-10 * float(s.norm()):
        raise ValueError("second is parallel to direction: the two do not span a plane")
    b2 = r / r.norm()
    return b1.to(first.dtype), b2.to(first.dtype)


@dataclass(frozen=True)
class SteeringPlane:
    """The paper's steering plane: ``b1`` (feature direction, from layer ``feature_layer``) and ``b2``."""

    b1: Tensor
    b2: Tensor
    feature_layer: int


def steering_plane(candidates: Tensor) -> SteeringPlane:
    """The reference's plane from per-layer candidate directions ``[L, d]`` (e.g. difference-in-means).

    Each candidate is normalized; ``b₁`` is the candidate with the highest mean cosine similarity to all
    candidates (the reference's ``max_sim`` choice); ``b₂`` is the first principal component of the
    (centred) unit candidates, sign fixed so that its largest-magnitude entry is positive (scikit-learn's
    convention), then orthogonalized against ``b₁``. Needs ``L ≥ 2`` candidates that are not all parallel.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> C = torch.randn(6, 16, generator=g, dtype=torch.float64)
        >>> p = steering_plane(C)
        >>> abs(float(p.b1 @ p.b2)) < 1e-12 and abs(float(p.b2.norm()) - 1) < 1e-12
        True
    """
    if not isinstance(candidates, Tensor):
        raise TypeError(f"candidates must be a torch.Tensor [L, d], got {type(candidates).__name__}")
    if candidates.is_complex() or not candidates.is_floating_point():
        raise TypeError(f"candidates must be a real floating-point tensor, got dtype {candidates.dtype}")
    if candidates.dim() != 2 or candidates.shape[0] < 2 or candidates.shape[1] < 2:
        raise ValueError(f"candidates must have shape [L >= 2, d >= 2], got {tuple(candidates.shape)}")
    check_finite(candidates, "candidates")
    C = candidates.detach().double()
    norms = C.norm(dim=1)
    if bool((norms == 0).any()):
        bad = int(torch.nonzero(norms == 0)[0, 0])
        raise ValueError(f"candidates[{bad}] is the zero vector")
    U = C / norms[:, None]
    sims = U @ U.T
    best = int(sims.mean(dim=1).argmax())
    X = U - U.mean(dim=0, keepdim=True)
    _, _, Vh = torch.linalg.svd(X, full_matrices=False)
    pc = Vh[0]
    if float(pc[pc.abs().argmax()]) < 0:
        pc = -pc
    b1, b2 = orthonormal_plane(U[best], pc)
    return SteeringPlane(b1.to(candidates.dtype), b2.to(candidates.dtype), best)


def plane_angle(h: Tensor, b1: Tensor, b2: Tensor) -> Tensor:
    """Angle (degrees, in ``(-180, 180]``) of the in-plane component of each state, measured from ``b₁``.

    Example:
        >>> plane_angle(torch.tensor([[0.0, 2.0, 5.0]]), torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0]))
        tensor([90.])
    """
    return torch.rad2deg(torch.atan2(h @ b2.to(h), h @ b1.to(h)))


@STEERERS.register("angular", norm_preserving=True, kind="rotation", needs_plane=True)
class AngularSteering(Steerer):
    r"""Angular Steering (Vu & Nguyen, NeurIPS 2025): set each state's in-plane angle to ``angle_deg``.

    ``h' = h − Ph + ‖Ph‖ (cos θ b₁ + sin θ b₂)`` with ``(b₁, b₂)`` the orthonormalized ``(direction, second)``
    (Gram–Schmidt, ``b₁ ∥ direction``). Norm-preserving exactly; the out-of-plane part ``h − Ph`` is
    unchanged; a state already at angle ``θ`` is unchanged. Default ``adaptive=True`` is the official code's
    default (``adaptive_mode=1``): only states with ``⟨h, b₁⟩ > 0`` are rotated, the others pass through;
    ``adaptive=False`` (``adaptive_mode=0``) rotates every state.

    Args:
        direction: feature direction ``[d]`` (any non-zero scale).
        second: second direction ``[d]`` spanning the plane with ``direction`` (not parallel to it). Use
            :meth:`from_candidates` for the paper's PCA-built plane.
        angle_deg: target angle θ in degrees, from ``b₁`` towards ``b₂``.
        adaptive: rotate only states aligned with ``b₁`` (default, reference ``adaptive_mode=1``); ``False``
            rotates every state (``adaptive_mode=0``).

    The work is done in at least float32 (float64 stays float64); the output has the input's dtype.

    Example:
        >>> s = AngularSteering(torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 1, 0]), angle_deg=180.0)
        >>> s.edit(torch.tensor([[2.0, 0, 1], [-2.0, 0, 1]]))   # adaptive: first state rotated, second not aligned
        tensor([[-2.,  0.,  1.],
                [-2.,  0.,  1.]])
        >>> s = AngularSteering(torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 1, 0]), angle_deg=90.0, adaptive=False)
        >>> s.edit(torch.tensor([[-2.0, 0, 1]]))                 # non-adaptive: every state is set to 90°
        tensor([[0., 2., 1.]])
    """

    name = "angular"
    norm_preserving = True

    def __init__(
        self,
        direction: Tensor,
        second: Tensor | None = None,
        angle_deg: float = 0.0,
        adaptive: bool = True,
    ) -> None:
        check_vector(direction, "direction")
        if second is None:
            raise ValueError(
                "angular steering needs a plane: pass second=<[d] direction> or build it with "
                "AngularSteering.from_candidates(candidates [L, d], angle_deg)"
            )
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {type(adaptive).__name__}")
        self.angle_deg = check_angle(angle_deg)
        self.b1, self.b2 = orthonormal_plane(direction, second)
        self.adaptive = adaptive

    @classmethod
    def from_candidates(
        cls, candidates: Tensor, angle_deg: float = 0.0, adaptive: bool = True
    ) -> AngularSteering:
        """Build the steerer on the paper's plane :func:`steering_plane` of per-layer candidates ``[L, d]``."""
        p = steering_plane(candidates)
        return cls(p.b1, p.b2, angle_deg=angle_deg, adaptive=adaptive)

    @property
    def dim(self) -> int:
        """Hidden size ``d`` the steerer acts on."""
        return int(self.b1.shape[0])

    def edit(self, h: Tensor) -> Tensor:
        """Rotate the in-plane part of every state ``h [..., d]`` to ``angle_deg``; same shape and dtype."""
        check_states(h, self.dim)
        w = compute_dtype(h.dtype)
        x = h.to(w)
        b1 = self.b1.to(device=x.device, dtype=w)
        b2 = self.b2.to(device=x.device, dtype=w)
        c1 = x @ b1
        c2 = x @ b2
        r = torch.hypot(c1, c2)  # ‖Ph‖ without squaring: no overflow at 1e20, no underflow at 1e-25 (float32)
        t = math.radians(self.angle_deg)
        target = math.cos(t) * b1 + math.sin(t) * b2
        out = x - c1[..., None] * b1 - c2[..., None] * b2 + r[..., None] * target
        if self.adaptive:
            out = torch.where((c1 > 0)[..., None], out, x)
        return out.to(h.dtype)

    def __repr__(self) -> str:
        return f"AngularSteering(d={self.dim}, angle_deg={self.angle_deg}, adaptive={self.adaptive})"

r"""Cylindrical steering: move along a central concept axis with a controlled normal-plane component.

Source: L. Gao, J. Zhang, W. Liu, F. Ji, C. Wang, Z. Song, A. Ghosh, Y. Mohamed, P. Nakov, X. Chen,
"The Cylindrical Representation Hypothesis for Language Model Steering", ICML 2026 (arXiv 2605.01844);
official code github.com/mbzuai-nlp/CRH (``penalty_exp/full_exp_steer_experiments_batch_*.py``).

Under the CRH a concept has a *central axis* ``â`` (the mean difference vector between concept-present and
concept-absent activations, "diffmean") and each sample's own difference vector ``δ`` makes an angle ``θ``
with it; its component orthogonal to the axis lies in the *normal plane* and sets how easily the axis
activates the concept. The reference steers with the additive vector

.. math::

    v = L\cos\theta\,\hat a + (1-p)\,L\sin\theta\,\hat n ,\qquad
    \hat n = \frac{\delta - (\delta\cdot\hat a)\hat a}{\lVert\delta - (\delta\cdot\hat a)\hat a\rVert},

``h' = h + v`` at every position, where ``L`` is the steering length and ``p ∈ [0, 1]`` the *penalty* on the
normal-plane component (``p = 1`` keeps only the axial move, ``p = 0`` steers along ``δ``'s direction).

This is additive: it does **not** preserve the norm (``norm_preserving=False``). What it controls exactly,
and what the tests check, are the cylindrical coordinates of the move: the axial coordinate ``⟨h, â⟩``
shifts by exactly ``L cos θ`` and the normal-plane displacement is exactly ``(1 − p) L sin θ n̂``
(:func:`cylindrical_coordinates` reads both).

Example:
    >>> import torch
    >>> from orthokit.steer.cylindrical import CylindricalSteering
    >>> axis = torch.tensor([2.0, 0.0, 0.0]); diff = torch.tensor([1.0, 1.0, 0.0])      # θ = 45°
    >>> s = CylindricalSteering(axis, diff, length=2 ** 0.5, penalty=0.5)
    >>> s.vector                                 # L cosθ â + (1 − p) L sinθ n̂ = (1, 0.5, 0)
    tensor([1.0000, 0.5000, 0.0000])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from orthokit.linalg._checks import compute_dtype
from orthokit.steer._hooks import Steerer
from orthokit.steer.angular import check_states, check_vector
from orthokit.steer.registry import STEERERS

__all__ = ["CylindricalSteering", "cylindrical_coordinates"]


def _check_real(x: Any, name: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    v = float(x)
    if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = (
            f" in [{lo}, {hi}]"
            if lo is not None and hi is not None
            else (f" >= {lo}" if lo is not None else "")
        )
        raise ValueError(f"{name} must be finite{rng}, got {x}")
    return v


def cylindrical_coordinates(h: Tensor, axis: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split states ``h [..., d]`` around ``axis``: axial coordinate ``⟨h, â⟩``, normal part ``h − ⟨h, â⟩â``, radius.

    Returns ``(z [...], normal [..., d], radius [...])`` with ``radius = ‖normal‖``; ``z² + radius² = ‖h‖²``.

    Example:
        >>> z, n, r = cylindrical_coordinates(torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.0, 5.0, 0.0]))
        >>> float(z), n.tolist(), float(r)
        (4.0, [3.0, 0.0, 0.0], 3.0)
    """
    check_vector(axis, "axis")
    check_states(h, int(axis.shape[0]))
    a = axis.to(h) / axis.to(h).norm()
    z = h @ a
    normal = h - z[..., None] * a
    return z, normal, normal.norm(dim=-1)


@STEERERS.register("cylindrical", norm_preserving=False, kind="additive", needs_plane=False)
class CylindricalSteering(Steerer):
    r"""CRH steering (Gao et al., ICML 2026): ``h + L cosθ â + (1 − p) L sinθ n̂`` at every steered position.

    Args:
        axis: the central axis ``[d]`` (the concept's mean difference vector; only its direction is used).
        diff: the sample's own difference vector ``δ [d]`` giving ``θ = ∠(δ, axis)`` and the normal direction
            ``n̂``. ``None``: steer along the axis only (``θ = 0``, i.e. activation addition of length ``L``
            along ``â``). If ``δ`` is parallel to the axis, ``n̂`` is undefined and taken as 0 (the
            reference's choice).
        length: steering length ``L`` (≥ 0). The reference sweeps ``L`` over ``(1.5, 3] · ‖diffmean‖``.
        penalty: ``p ∈ [0, 1]``, the fraction of the normal-plane component removed.

    Not norm-preserving (additive by design); exact invariants: the axial coordinate moves by ``L cos θ`` and
    the normal-plane part moves by ``(1 − p) L sin θ n̂``.

    Example:
        >>> s = CylindricalSteering(torch.tensor([0.0, 1.0]), length=3.0)
        >>> s.edit(torch.tensor([[1.0, 1.0]]))
        tensor([[1., 4.]])
    """

    name = "cylindrical"
    norm_preserving = False

    def __init__(
        self, axis: Tensor, diff: Tensor | None = None, length: float = 1.0, penalty: float = 0.0
    ) -> None:
        check_vector(axis, "axis")
        self.length = _check_real(length, "length", lo=0.0)
        self.penalty = _check_real(penalty, "penalty", lo=0.0, hi=1.0)
        a = axis.detach().double()
        a = a / a.norm()
        if diff is None:
            cos_t, sin_t, n = 1.0, 0.0, torch.zeros_like(a)
        else:
            check_vector(diff, "diff")
            if diff.shape != axis.shape:
                raise ValueError(
                    f"diff must have the shape of axis {tuple(axis.shape)}, got {tuple(diff.shape)}"
                )
            dv = diff.detach().double().to(a.device)
            dn = float(dv.norm())
            perp = dv - (dv @ a) * a
            pn = float(perp.norm())
            # cos θ and sin θ from the two orthogonal parts (stable near 0° and 180°, unlike sqrt(1 − cos²))
            cos_t = max(-1.0, min(1.0, float(dv @ a) / dn))
            if pn > 1e-10 * dn:
                sin_t, n = min(1.0, pn / dn), perp / pn
            else:
                sin_t, n = 0.0, torch.zeros_like(a)
        self.axis = a.to(axis.dtype)
        self.normal = n.to(axis.dtype)
        self.cos_theta = cos_t
        self.sin_theta = sin_t
        v = self.length * cos_t * a + (1.0 - self.penalty) * self.length * sin_t * n
        self._vector64 = v
        self.vector = v.to(axis.dtype)

    @property
    def dim(self) -> int:
        """Hidden size ``d`` the steerer acts on."""
        return int(self.axis.shape[0])

    @property
    def theta_deg(self) -> float:
        """Angle between the sample difference vector and the axis, degrees (0 when ``diff`` is None)."""
        return math.degrees(math.atan2(self.sin_theta, self.cos_theta))

    def edit(self, h: Tensor) -> Tensor:
        """Add the cylindrical steering vector to every state ``h [..., d]``; same shape and dtype."""
        check_states(h, self.dim)
        w = compute_dtype(h.dtype)
        return (h.to(w) + self._vector64.to(device=h.device, dtype=w)).to(h.dtype)

    def __repr__(self) -> str:
        return (
            f"CylindricalSteering(d={self.dim}, length={self.length}, penalty={self.penalty}, "
            f"theta_deg={self.theta_deg:.2f})"
        )

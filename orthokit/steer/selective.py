r"""Selective Steering: a norm-preserving plane rotation applied only on discriminative layers.

Source: Q.-A. Dang, C. Ngo, "Selective Steering: Norm-Preserving Control Through Discriminative Layer
Selection" (arXiv 2601.19375, 2026); official code github.com/knoveleng/steering
(``steering/steering/operator.py::SelectiveSteeringOperator``, ``steering/plane/constructor.py``,
``steering/direction/calculator.py``).

**Rotation.** With an orthonormal plane ``(b₁, b₂)``, ``P = b₁b₁ᵀ + b₂b₂ᵀ`` and the in-plane rotation
``V_θ = [b₁ b₂] R_θ [b₁ b₂]ᵀ`` (``R_θ`` the 2×2 counter-clockwise rotation),

.. math::

    h' = h - P h + V_\theta h ,

i.e. the in-plane component is rotated **by** ``θ`` (Angular Steering sets it **to** ``θ``), the
out-of-plane component is untouched and ``‖h'‖ = ‖h‖`` because ``V_θ`` is orthogonal on the plane.

**Layer selection.** For a unit feature direction ``d̂`` and per-layer class activations, layer ``ℓ`` is
steered iff the mean cosine of the positive class with ``d̂`` and that of the negative class have opposite
signs: ``mean_i cos(h⁺_{ℓ,i}, d̂) · mean_j cos(h⁻_{ℓ,j}, d̂) < 0`` (the reference normalizes each activation
before projecting). All such layers are selected (the reference's default ``scatter`` selection).

**Sites.** The reference reads and steers the outputs of the normalization modules inside every decoder block
(``input_layernorm``/``post_attention_layernorm``), selecting module by module; :func:`selective_steer` and
:func:`plan_selective` do the same by default (``sites="norm"``, :func:`norm_sites`). ``sites="block"`` is
orthokit's named option: calibrate, select and rotate the residual stream at the block outputs (the family's
:func:`~orthokit.steer._hooks.steer` contract).

Example:
    >>> import torch
    >>> from orthokit.steer.selective import SelectiveSteering
    >>> b1, b2 = torch.eye(3, dtype=torch.float64)[:2]
    >>> s = SelectiveSteering(b1, b2, angle_deg=90.0)
    >>> s.edit(torch.tensor([[1.0, 1.0, 7.0]], dtype=torch.float64))   # (1, 1) rotated by 90° -> (-1, 1)
    tensor([[-1.,  1.,  7.]], dtype=torch.float64)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from orthokit.linalg._checks import check_finite, compute_dtype
from orthokit.steer._hooks import (
    Steerer,
    SteeringHandle,
    _apply_edit,
    _check_steerer_dim,
    residual_layers,
    steer,
)
from orthokit.steer.angular import check_angle, check_states, check_vector, orthonormal_plane, steering_plane
from orthokit.steer.directions import collect_residuals, mean_difference
from orthokit.steer.registry import STEERERS

__all__ = [
    "SelectivePlan",
    "SelectiveSteering",
    "class_alignment",
    "norm_sites",
    "plan_selective",
    "select_layers",
    "selective_steer",
    "steer_norm_sites",
]

_SITES = ("block", "norm")


@STEERERS.register("selective", norm_preserving=True, kind="rotation", needs_plane=True)
class SelectiveSteering(Steerer):
    r"""Selective Steering's rotation (Dang & Ngo, 2026): rotate each state's in-plane part **by** ``angle_deg``.

    ``h' = h − Ph + V_θ h`` with ``V_θ = [b₁ b₂] R_θ [b₁ b₂]ᵀ`` and ``(b₁, b₂)`` the Gram–Schmidt
    orthonormalized ``(direction, second)``. Exactly norm-preserving; ``angle_deg = 0`` (or 360) is the
    identity. The layer choice is not part of the edit: register it on the layers returned by
    :func:`select_layers` (or use :func:`selective_steer`, which does both).

    Args:
        direction: feature direction ``[d]``.
        second: second plane direction ``[d]`` (not parallel to ``direction``); see
            :func:`orthokit.steer.angular.steering_plane` for the paper's PCA-built one.
        angle_deg: rotation angle θ in degrees, counter-clockwise from ``b₁`` towards ``b₂``.

    Example:
        >>> s = SelectiveSteering(torch.tensor([1.0, 0, 0, 0]), torch.tensor([0.0, 2, 0, 0]), angle_deg=180.0)
        >>> s.edit(torch.tensor([3.0, 4.0, 1.0, 2.0]))
        tensor([-3., -4.,  1.,  2.])
    """

    name = "selective"
    norm_preserving = True

    def __init__(self, direction: Tensor, second: Tensor | None = None, angle_deg: float = 0.0) -> None:
        check_vector(direction, "direction")
        if second is None:
            raise ValueError(
                "selective steering needs a plane: pass second=<[d] direction> (e.g. steering_plane(candidates).b2) "
                "or use selective_steer(model, pos_ids, neg_ids, angle_deg)"
            )
        self.angle_deg = check_angle(angle_deg)
        self.b1, self.b2 = orthonormal_plane(direction, second)

    @property
    def dim(self) -> int:
        """Hidden size ``d`` the steerer acts on."""
        return int(self.b1.shape[0])

    def edit(self, h: Tensor) -> Tensor:
        """Rotate the in-plane part of every state ``h [..., d]`` by ``angle_deg``; same shape and dtype."""
        check_states(h, self.dim)
        w = compute_dtype(h.dtype)
        x = h.to(w)
        b1 = self.b1.to(device=x.device, dtype=w)
        b2 = self.b2.to(device=x.device, dtype=w)
        c1 = (x @ b1)[..., None]
        c2 = (x @ b2)[..., None]
        t = math.radians(self.angle_deg)
        c, s = math.cos(t), math.sin(t)
        # V_θ h − P h, written in plane coordinates: (c·c1 − s·c2 − c1) b1 + (s·c1 + c·c2 − c2) b2
        out = x + ((c - 1.0) * c1 - s * c2) * b1 + (s * c1 + (c - 1.0) * c2) * b2
        return out.to(h.dtype)

    def __repr__(self) -> str:
        return f"SelectiveSteering(d={self.dim}, angle_deg={self.angle_deg})"


def _check_class_states(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [L, n, d], got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"{name} must be a real floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 3 or 0 in x.shape:
        raise ValueError(f"{name} must have shape [L, n, d] with no empty dimension, got {tuple(x.shape)}")
    check_finite(x, name)
    return x


def class_alignment(pos_states: Tensor, neg_states: Tensor, direction: Tensor) -> Tensor:
    """Per-layer mean cosine of each class with ``direction``: ``[L, 2]`` (column 0 positive, 1 negative).

    States ``[L, n, d]`` (``n`` may differ between the classes); computed in float64. A zero state has
    cosine 0. ``direction`` is one ``[d]`` vector for every layer, or one per layer ``[L, d]``.

    Example:
        >>> pos = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]]); neg = torch.tensor([[[-1.0, 0.0]], [[1.0, 1.0]]])
        >>> class_alignment(pos, neg, torch.tensor([1.0, 0.0])).tolist()
        [[1.0, -1.0], [1.0, 0.7071067811865475]]
    """
    _check_class_states(pos_states, "pos_states")
    _check_class_states(neg_states, "neg_states")
    if pos_states.shape[0] != neg_states.shape[0] or pos_states.shape[2] != neg_states.shape[2]:
        raise ValueError(
            f"pos_states {tuple(pos_states.shape)} and neg_states {tuple(neg_states.shape)} must agree on L and d"
        )
    L, _, d = pos_states.shape
    if not isinstance(direction, Tensor):
        raise TypeError(f"direction must be a torch.Tensor, got {type(direction).__name__}")
    if direction.dim() == 1:
        check_vector(direction, "direction")
        dirs = direction.detach().double().expand(L, -1)
    else:
        if direction.shape != (L, d):
            raise ValueError(f"direction must have shape [{d}] or [{L}, {d}], got {tuple(direction.shape)}")
        check_finite(direction, "direction")
        dirs = direction.detach().double()
    if dirs.shape[-1] != d:
        raise ValueError(f"direction must have {d} entries (the states' d), got {dirs.shape[-1]}")
    dn = dirs.norm(dim=-1, keepdim=True)
    if bool((dn == 0).any()):
        raise ValueError("direction has a zero row: the cosine is undefined")
    u = (dirs / dn).to(pos_states.device)

    def mean_cos(x: Tensor) -> Tensor:
        x = x.detach().double()
        n = x.norm(dim=-1, keepdim=True)
        xn = torch.where(n > 0, x / n.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(x))
        return torch.einsum("lnd,ld->ln", xn, u).mean(dim=1)

    return torch.stack([mean_cos(pos_states), mean_cos(neg_states)], dim=1)


def select_layers(pos_states: Tensor, neg_states: Tensor, direction: Tensor | None = None) -> list[int]:
    """Selective Steering's discriminative layers: the class means' cosines with the direction differ in sign.

    Args:
        pos_states: positive-class residual states ``[L, n⁺, d]`` (e.g. ``collect_residuals(..., positions="last")``).
        neg_states: negative-class residual states ``[L, n⁻, d]``.
        direction: the feature direction ``[d]`` (or one per layer ``[L, d]``). ``None``: the reference's
            choice — the per-layer unit difference-in-means candidate with the highest mean cosine to all
            candidates (``steering_plane(mean_difference(pos, neg)).b1``).

    Returns:
        Sorted layer indices ``ℓ`` with ``mean cos(h⁺_ℓ, d̂) · mean cos(h⁻_ℓ, d̂) < 0`` (possibly empty).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> pos = torch.randn(4, 8, 6, generator=g); neg = torch.randn(4, 8, 6, generator=g)
        >>> pos[1, :, 0] += 5.0; neg[1, :, 0] -= 5.0          # layer 1 separates the classes along e₀
        >>> 1 in select_layers(pos, neg, torch.eye(6)[0])
        True
    """
    if direction is None:
        _check_class_states(pos_states, "pos_states")
        _check_class_states(neg_states, "neg_states")
        direction = steering_plane(mean_difference(pos_states, neg_states)).b1
    a = class_alignment(pos_states, neg_states, direction)
    return [int(i) for i in torch.nonzero(a[:, 0] * a[:, 1] < 0).flatten().tolist()]


def norm_sites(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    """The reference's steering sites: every hidden-size normalization module inside the decoder blocks.

    Returns ``(block index, name inside the block, module)`` in block order — e.g. ``input_layernorm`` and
    ``post_attention_layernorm`` for Llama/Qwen2/GPT-NeoX, ``ln_1``/``ln_2`` for GPT-2. Modules whose class name
    contains ``norm`` and whose weight has the hidden size count (per-head q/k norms do not). ``ValueError`` if
    there are none.
    """
    cfg = getattr(model, "config", None)
    d = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    out: list[tuple[int, str, nn.Module]] = []
    for i, block in enumerate(residual_layers(model)):
        for name, mod in block.named_modules():
            w = getattr(mod, "weight", None)
            if (
                "norm" in type(mod).__name__.lower()
                and isinstance(w, Tensor)
                and w.dim() == 1
                and w.shape[0] == d
            ):
                out.append((i, name, mod))
    if not out:
        raise ValueError(
            f"no hidden-size normalization module found in the decoder blocks of {type(model).__name__}"
        )
    return out


@torch.no_grad()
def _collect_sites(model: nn.Module, ids: Tensor, modules: list[nn.Module], positions: str) -> Tensor:
    """Outputs of ``modules`` at ``positions`` (``"last"`` or ``"all"``) for ids ``[n, T]``: ``[S, N, d]``."""
    if (
        not isinstance(ids, Tensor)
        or ids.dtype not in (torch.int64, torch.int32)
        or ids.dim() != 2
        or 0 in ids.shape
    ):
        raise TypeError("token ids must be a non-empty integer tensor [n, T]")
    store: dict[int, Tensor] = {}

    def make(i: int) -> Any:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            store[i] = (out[0] if isinstance(out, tuple) else out).detach()

        return hook

    handles = [m.register_forward_hook(make(i)) for i, m in enumerate(modules)]
    try:
        model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    per = [
        store[i][:, -1] if positions == "last" else store[i].reshape(-1, store[i].shape[-1])
        for i in range(len(modules))
    ]
    return torch.stack(per).float() if per[0].dtype in (torch.float16, torch.bfloat16) else torch.stack(per)


@dataclass(frozen=True)
class SelectivePlan:
    """What :func:`plan_selective` found: the plane ``(b1, b2)``, the site ``b1`` came from (``feature_layer``), the
    sites to steer (``layers``: block indices for ``sites="block"``, indices into :func:`norm_sites` for
    ``sites="norm"``), their names and the per-site class alignment ``[S, 2]`` they were chosen by."""

    b1: Tensor
    b2: Tensor
    feature_layer: int
    layers: list[int]
    alignment: Tensor
    sites: str = "norm"
    site_names: list[str] = field(default_factory=list)


def plan_selective(
    model: nn.Module,
    pos_ids: Tensor,
    neg_ids: Tensor,
    *,
    positions: str = "last",
    sites: str = "norm",
) -> SelectivePlan:
    """The reference's calibration: activations → per-site difference-in-means → plane → discriminative sites.

    With ``sites="norm"`` (default, the reference's choice) the activations are the outputs of every
    normalization module (:func:`norm_sites`); with ``sites="block"`` the hidden states after every block
    (``collect_residuals``). The
    per-site candidates ``mean(pos) − mean(neg)`` give the plane (:func:`~orthokit.steer.angular.steering_plane`)
    and ``b1`` picks the sites (:func:`select_layers`). The model is not modified: the calibration forward
    passes run in eval mode (no dropout, so the plan is deterministic) without gradients, and every module's
    training flag is restored afterwards.
    """
    if sites not in _SITES:
        raise ValueError(f"sites must be one of {_SITES}, got {sites!r}")
    with _calibrating(model):
        return _plan(model, pos_ids, neg_ids, positions, sites)


@contextmanager
def _calibrating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for calibration forward passes; every module's training flag is restored."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, t in flags:
            m.training = t


def _plan(model: nn.Module, pos_ids: Tensor, neg_ids: Tensor, positions: str, sites: str) -> SelectivePlan:
    """The body of :func:`plan_selective` (run under :func:`_calibrating`)."""
    if sites == "block":
        pos = collect_residuals(model, pos_ids, positions=positions)
        neg = collect_residuals(model, neg_ids, positions=positions)
        names = [f"block {i}" for i in range(pos.shape[0])]
    else:
        if positions not in ("all", "last"):
            raise ValueError(f"positions must be 'all' or 'last', got {positions!r}")
        found = norm_sites(model)
        mods = [m for _, _, m in found]
        pos = _collect_sites(model, pos_ids, mods, positions)
        neg = _collect_sites(model, neg_ids, mods, positions)
        names = [f"block {i}: {n}" for i, n, _ in found]
    plane = steering_plane(mean_difference(pos, neg))
    align = class_alignment(pos, neg, plane.b1)
    chosen = [int(i) for i in torch.nonzero(align[:, 0] * align[:, 1] < 0).flatten().tolist()]
    return SelectivePlan(plane.b1, plane.b2, plane.feature_layer, chosen, align, sites, names)


def _steer_modules(
    modules: list[nn.Module], steerer: Steerer, positions: str, names: list[str]
) -> SteeringHandle:
    """Forward hooks replacing each module's output by ``steerer.edit`` of it, with the checks of
    :func:`~orthokit.steer._hooks.steer` (shape, dtype, NaN/inf from finite states; half precision in float32)."""
    label = getattr(steerer, "name", type(steerer).__name__)

    def make(where: str) -> Any:
        def hook(_m: nn.Module, _a: Any, out: Any) -> Any:
            if isinstance(out, tuple) and out and isinstance(out[0], Tensor):
                h = out[0]
            elif isinstance(out, Tensor):
                h = out
            else:
                raise TypeError(f"{where}: module output is {type(out).__name__}, expected a Tensor")
            if positions == "all" or h.dim() < 2:
                new = _apply_edit(steerer.edit, h, where)
            else:
                new = torch.cat([h[..., :-1, :], _apply_edit(steerer.edit, h[..., -1:, :], where)], -2)
            return (new, *out[1:]) if isinstance(out, tuple) else new

        return hook

    handles = [
        m.register_forward_hook(make(f"steerer {label!r} at norm site {n}")) for m, n in zip(modules, names)
    ]
    return SteeringHandle(handles, steerer)


def _check_site_indices(layers: Any, n: int, what: str) -> list[int]:
    """``layers`` as sorted distinct indices into ``n`` sites (negative allowed); TypeError/ValueError otherwise."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"layers must be a sequence of ints, got {type(layers).__name__}")
    if len(layers) == 0:
        raise ValueError("layers is empty: pass None to steer the discriminative sites")
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"layers must hold ints, got {type(i).__name__} {i!r}")
        if not -n <= i < n:
            raise ValueError(f"layers must index the {n} {what} (0..{n - 1}), got {i}")
    out = [i % n for i in layers]
    if len(set(out)) != len(out):
        raise ValueError(f"layers lists a site twice: {list(layers)}")
    return out


def steer_norm_sites(
    model: nn.Module, steerer: Steerer, *, sites: Sequence[int] | None = None, positions: str = "all"
) -> SteeringHandle:
    """Register ``steerer.edit`` on the outputs of the blocks' normalization modules (the Angular and Selective
    Steering references' sites) instead of the block outputs.

    Args:
        model: a transformers causal LM.
        steerer: any :class:`~orthokit.steer._hooks.Steerer` (e.g. ``AngularSteering``) of the hidden size; a
            direction of another length is refused (``ValueError``) before any hook is registered, as in
            :func:`~orthokit.steer._hooks.steer`.
        sites: indices into :func:`norm_sites` (default: every one, as the Angular Steering reference does).
        positions: ``"all"`` or ``"last"``.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from orthokit.steer.angular import AngularSteering
        >>> model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=8, n_embd=8, n_layer=2, n_head=2)).eval()
        >>> with steer_norm_sites(model, AngularSteering(torch.eye(8)[0], torch.eye(8)[1], angle_deg=90.0)) as h:
        ...     _ = model(torch.tensor([[1, 2, 3]]))
        >>> len(norm_sites(model)), h.active
        (4, False)
    """
    if not callable(getattr(steerer, "edit", None)):
        raise TypeError(f"steerer must be a Steerer, got {type(steerer).__name__}")
    if positions not in ("all", "last"):
        raise ValueError(f"positions must be 'all' or 'last', got {positions!r}")
    found = norm_sites(model)
    _check_steerer_dim(steerer, model)  # a wrong-length direction fails here, before any hook is registered
    n = len(found)
    if sites is None:
        chosen = list(range(n))
    else:
        if isinstance(sites, (str, bytes)) or not isinstance(sites, Sequence) or len(sites) == 0:
            raise TypeError("sites must be a non-empty sequence of norm-site indices or None")
        if any(isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n for i in sites):
            raise ValueError(f"sites must index the {n} normalization sites (0..{n - 1}), got {list(sites)}")
        chosen = sorted({i % n for i in sites})
    return _steer_modules(
        [found[i][2] for i in chosen], steerer, positions, [f"{found[i][0]}:{found[i][1]}" for i in chosen]
    )


def selective_steer(
    model: nn.Module,
    pos_ids: Tensor,
    neg_ids: Tensor,
    angle_deg: float,
    *,
    positions: str = "all",
    calibration_positions: str = "last",
    layers: Sequence[int] | None = None,
    sites: str = "norm",
) -> SteeringHandle:
    """Calibrate (:func:`plan_selective`) and register :class:`SelectiveSteering` on the selected sites.

    Args:
        model: a transformers causal LM (any decoder :func:`orthokit.steer._hooks.residual_layers` finds).
        pos_ids, neg_ids: token ids ``[n, T]`` of the two calibration classes (e.g. target / other style).
        angle_deg: rotation angle θ (degrees).
        positions: token positions steered during generation (``"all"`` as in the reference, or ``"last"``).
        calibration_positions: positions read for calibration (the reference uses the last token).
        layers: override the selection (steer these sites instead); ``None`` uses the discriminative ones.
        sites: ``"norm"`` (default: the outputs of the blocks' normalization modules, the reference's sites;
            ``layers`` then indexes :func:`norm_sites`) or ``"block"`` (orthokit's option: the residual stream
            after each block, ``layers`` indexes the blocks).

    Returns:
        The :class:`~orthokit.steer._hooks.SteeringHandle` (``.remove()`` restores the model). ``ValueError`` if
        no site is discriminative (nothing would be steered); nothing is registered then. Bad ``layers``
        (non-int entries, out of range, repeated, empty) raise before any calibration, like
        :func:`~orthokit.steer._hooks.steer`.
    """
    angle = check_angle(angle_deg)
    if positions not in ("all", "last"):
        raise ValueError(f"positions must be 'all' or 'last', got {positions!r}")
    if sites not in _SITES:
        raise ValueError(f"sites must be one of {_SITES}, got {sites!r}")
    override: list[int] | None = None
    if layers is not None:
        if sites == "block":
            override = _check_site_indices(layers, len(residual_layers(model)), "decoder blocks")
        else:
            override = _check_site_indices(layers, len(norm_sites(model)), "normalization sites")
    plan = plan_selective(model, pos_ids, neg_ids, positions=calibration_positions, sites=sites)
    chosen = list(plan.layers) if override is None else override
    if not chosen:
        raise ValueError(
            "no discriminative site: the class means' cosines with the feature direction have the same sign "
            "everywhere; pass layers=[...] to steer anyway"
        )
    steerer = SelectiveSteering(plan.b1, plan.b2, angle_deg=angle)
    if sites == "block":
        return steer(model, steerer, layers=chosen, positions=positions)
    return steer_norm_sites(model, steerer, sites=chosen, positions=positions)

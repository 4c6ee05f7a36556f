r"""Grassmann class representation (GCR; Wang, Li, Zhang, ICCV 2023, "Get the Best of Both Worlds: Improving
Accuracy and Transferability by Grassmann Class Representation", arXiv 2308.01547; official code
``innerlee/gcr``, ``gcr/grassmann_head.py`` and ``gcr/rsgd.py``).

Each class ``c`` is a ``k``-dimensional subspace of the feature space, stored as an orthonormal basis
``S_c ∈ R^{d×k}`` (a point of the Grassmann manifold ``Gr(d, k)``). The logit of a feature ``x`` is the length
of its projection onto the subspace, scaled:

.. math:: \operatorname{logit}_c(x) = \gamma\, \lVert S_c^\top \hat x \rVert, \qquad \hat x = x / \lVert x\rVert,

which depends on the subspace only (``S_c R`` gives the same logit for any ``R ∈ O(k)``). ``k = 1`` is a cosine
classifier with ``|cos|``. Training keeps every ``S_c`` orthonormal with Riemannian SGD
(:class:`GrassmannSGD`): the Euclidean gradient ``G`` is projected to the tangent space, ``Ĝ = G − S (SᵀG)``,
and the step follows the geodesic ``S(t) = (S V cos(tΣ) + U sin(tΣ)) Vᵀ`` with ``Ĝ = U Σ Vᵀ`` (as the official
RSGD), or a QR / polar retraction of ``S − η Ĝ`` (``retraction="qr" | "polar"``), all built on
:func:`orthokit.linalg.qr_basis` and :func:`orthokit.linalg.polar`.

Example:
    >>> import torch
    >>> from orthokit.align.grassmann import GrassmannClassHead, GrassmannSGD, grassmann_param_groups
    >>> model = torch.nn.Sequential(torch.nn.Linear(6, 16), GrassmannClassHead(16, 3, subdim=2, seed=0))
    >>> opt = GrassmannSGD(grassmann_param_groups(model), lr=0.1, momentum=0.9)
    >>> x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    >>> for _ in range(20):
    ...     opt.zero_grad(); torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    >>> model[1].orthonormality_error() < 1e-5
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthokit.align.opl import finite_features_guard
from orthokit.align.registry import ALIGN_LOSSES
from orthokit.linalg import polar, qr_basis

__all__ = [
    "GrassmannClassHead",
    "GrassmannSGD",
    "grassmann_param_groups",
    "tangent_projection",
    "grassmann_retract",
]

_RETRACTIONS = ("exp", "qr", "polar")


def tangent_projection(S: Tensor, G: Tensor) -> Tensor:
    """Project ``G`` onto the tangent space of the Grassmann manifold at the orthonormal basis ``S``
    (``[..., d, k]``): ``G − S (SᵀG)``.

    Example:
        >>> S = qr_basis(torch.randn(5, 2, dtype=torch.float64))
        >>> T = tangent_projection(S, torch.randn(5, 2, dtype=torch.float64))
        >>> float((S.T @ T).abs().max()) < 1e-12
        True
    """
    return G - S @ (S.mT @ G)


def grassmann_retract(S: Tensor, T: Tensor, step: float, retraction: str = "exp") -> Tensor:
    """Move the orthonormal basis ``S`` (``[..., d, k]``) by ``step · T`` along the tangent vector ``T``.

    ``"exp"``: the geodesic ``(S V cos(step Σ) + U sin(step Σ)) Vᵀ`` with ``T = U Σ Vᵀ`` (thin SVD; the official
    RSGD's update); ``"qr"``: :func:`~orthokit.linalg.qr_basis` of ``S + step T``; ``"polar"``: the exact polar
    factor (``orthokit.linalg.polar(..., method="svd")``) of ``S + step T``.

    Example:
        >>> S = qr_basis(torch.randn(6, 2, dtype=torch.float64))
        >>> T = tangent_projection(S, torch.randn(6, 2, dtype=torch.float64))
        >>> S2 = grassmann_retract(S, T, -0.1)
        >>> float((S2.T @ S2 - torch.eye(2, dtype=torch.float64)).abs().max()) < 1e-12
        True
    """
    if retraction == "exp":
        U, sig, Vh = torch.linalg.svd(T, full_matrices=False)
        ang = step * sig
        return (S @ Vh.mT * torch.cos(ang).unsqueeze(-2) + U * torch.sin(ang).unsqueeze(-2)) @ Vh
    if retraction == "qr":
        return qr_basis(S + step * T)  # type: ignore[return-value]
    if retraction == "polar":
        return polar(S + step * T, method="svd")
    raise ValueError(
        f"grassmann_retract: unknown retraction {retraction!r}; valid: {', '.join(_RETRACTIONS)}"
    )


@ALIGN_LOSSES.register("grassmann", aliases=("gcr", "grassmann_class_representation"), kind="head")
class GrassmannClassHead(nn.Module):
    """Grassmann class representation head: ``logit_c = γ ‖S_cᵀ x̂‖`` (see the module docstring).

    Args:
        in_features: feature dimension ``d``.
        n_classes: number of classes.
        subdim: subspace dimension ``k`` per class (the paper's best ImageNet setting is 8; ``k ≤ d``).
        gamma: logit scale γ (official head default 25).
        normalize: L2-normalize the features first (official: yes).
        seed: seed of the random orthonormal initialization (``None``: torch's global generator).
        dtype: dtype of ``bases`` (default: torch's default dtype); features must have it (or run under autocast).
        check_finite: raise a one-line ``ValueError`` when the features hold NaN/inf (default on). The check
            reduces the logits and looks at the features only when that sum is not finite; on a 256×512 CPU
            batch with 10 classes × k = 8 it costs ~4 % of a forward (less with more classes): turn it off in a
            tight loop whose inputs are known to be finite.

    ``bases`` is a ``[n_classes, d, k]`` parameter with orthonormal columns per class; train it with
    :class:`GrassmannSGD`; a plain optimizer *can* step it (the gradient is an ordinary tensor) but silently
    leaves the manifold — :meth:`orthonormality_error` tells.
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        subdim: int = 8,
        *,
        gamma: float = 25.0,
        normalize: bool = True,
        seed: int | None = None,
        dtype: torch.dtype | None = None,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("n_classes", n_classes), ("subdim", subdim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GrassmannClassHead: {name} must be a positive int, got {v!r}")
        if subdim > in_features:
            raise ValueError(f"GrassmannClassHead: subdim={subdim} exceeds in_features={in_features}")
        if not isinstance(gamma, (int, float)) or not gamma > 0:
            raise ValueError(f"GrassmannClassHead: gamma must be > 0, got {gamma!r}")
        self.in_features, self.n_classes, self.subdim = in_features, n_classes, subdim
        self.gamma, self.normalize = float(gamma), bool(normalize)
        self.check_finite = bool(check_finite)
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        A = torch.randn(n_classes, in_features, subdim, generator=g, dtype=torch.float64)
        self.bases = nn.Parameter(qr_basis(A).to(dtype or torch.get_default_dtype()))  # type: ignore[union-attr]

    def forward(self, features: Tensor) -> Tensor:
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[1] != self.in_features:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"GrassmannClassHead: features must be [batch, {self.in_features}], got {shape}")
        dt = self.bases.dtype
        if not features.is_floating_point() or (
            features.dtype != dt and not torch.is_autocast_enabled(features.device.type)
        ):
            raise TypeError(
                f"GrassmannClassHead: features must be floating {dt} like the head's bases, got {features.dtype} "
                "(convert the features, or the head with .to(dtype))"
            )
        x = F.normalize(features, dim=1) if self.normalize else features
        proj = torch.einsum("bd,cdk->bck", x, self.bases)
        logits = self.gamma * torch.linalg.vector_norm(proj, dim=-1)
        if self.check_finite:
            finite_features_guard(logits, features, "GrassmannClassHead")
        return logits

    @torch.no_grad()
    def orthonormality_error(self) -> float:
        """``max_c ‖S_cᵀS_c − I‖_max`` (computed in float64)."""
        S = self.bases.detach().to(torch.float64)
        eye = torch.eye(self.subdim, dtype=torch.float64, device=S.device)
        return float((S.mT @ S - eye).abs().max())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, n_classes={self.n_classes}, subdim={self.subdim}, "
            f"gamma={self.gamma}, normalize={self.normalize}"
        )


def grassmann_param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters for :class:`GrassmannSGD`: every :class:`GrassmannClassHead`'s
    ``bases`` in a group with ``grassmann=True``, everything else in a plain-SGD group (``grassmann=False``).

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), GrassmannClassHead(8, 2, subdim=2))
        >>> [len(g["params"]) for g in grassmann_param_groups(m)], [g["grassmann"] for g in grassmann_param_groups(m)]
        ([2, 1], [False, True])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"grassmann_param_groups: expected an nn.Module, got {type(model).__name__}")
    geo = [m.bases for m in model.modules() if isinstance(m, GrassmannClassHead) and m.bases.requires_grad]
    ids = {id(p) for p in geo}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups: list[dict[str, Any]] = []
    if rest:
        groups.append({"params": rest, "grassmann": False})
    if geo:
        groups.append({"params": geo, "grassmann": True})
    if not groups:
        raise ValueError("grassmann_param_groups: the model has no trainable parameters")
    return groups


def _check_hyper(h: dict[str, Any], where: str) -> None:
    """One-line ``ValueError`` for an out-of-range GrassmannSGD hyper-parameter (``where``: "" or "param group i: ")."""
    for name in ("lr", "momentum", "dampening", "weight_decay"):
        v = h[name]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
            raise ValueError(f"GrassmannSGD: {where}{name} must be a number >= 0, got {v!r}")
    if h["retraction"] not in _RETRACTIONS:
        raise ValueError(
            f"GrassmannSGD: {where}unknown retraction {h['retraction']!r}; valid: {', '.join(_RETRACTIONS)}"
        )
    r = h["reorth_every"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"GrassmannSGD: {where}reorth_every must be an int >= 0, got {r!r}")
    if not isinstance(h["grassmann"], bool):
        raise ValueError(f"GrassmannSGD: {where}grassmann must be a bool, got {h['grassmann']!r}")


def _check_basis(p: Tensor, pi: int, gi: int) -> None:
    """One-line ``ValueError`` unless ``p`` is ``[..., d, k]`` (``k ≤ d``) with orthonormal columns (1e-3)."""
    if p.dim() < 2 or p.shape[-1] > p.shape[-2]:
        raise ValueError(
            f"GrassmannSGD: Grassmann parameter {pi} of group {gi} must be [..., d, k] with k <= d, "
            f"got {tuple(p.shape)}"
        )
    S = p.detach().to(torch.float64)
    err = float((S.mT @ S - torch.eye(S.shape[-1], dtype=torch.float64, device=S.device)).abs().max())
    if not err <= 1e-3:  # NaN/inf entries fail too
        raise ValueError(
            f"GrassmannSGD: Grassmann parameter {pi} of group {gi} does not have orthonormal columns "
            f"(max |SᵀS − I| = {err:.2e}); initialize it with orthokit.linalg.qr_basis"
        )


class GrassmannSGD(torch.optim.Optimizer):
    """Riemannian SGD with momentum for Grassmann bases (the official ``RSGD`` of ``innerlee/gcr``), plain SGD
    for the other parameters.

    Parameters in groups with ``grassmann=True`` (the default) must be ``[..., d, k]`` tensors with orthonormal
    columns (``k ≤ d``; leading dims are independent points, e.g. one per class). For them a step is:
    momentum ``b ← μ b + (1 − dampening) G`` on the Euclidean gradient ``G`` (no weight decay, as the official
    code); direction ``Ĝ = b − S(Sᵀb)`` (the buffer is transported to the current tangent space by projection);
    ``S ← retract(S, −η Ĝ)``; every ``reorth_every`` steps a :func:`~orthokit.linalg.qr_basis` re-orthonormalization
    (official: 5) removes round-off drift. Groups with ``grassmann=False`` get ``torch.optim.SGD``'s rule
    (momentum, dampening, weight decay). A step whose result is not finite raises ``ValueError`` and changes
    neither parameters nor state.

    Args:
        params: parameters or groups (see :func:`grassmann_param_groups`).
        lr: step size η.
        momentum: μ (default 0).
        dampening: momentum dampening (default 0).
        weight_decay: L2 weight decay, applied to non-Grassmann parameters only.
        retraction: ``"exp"`` (geodesic, official), ``"qr"`` or ``"polar"``.
        reorth_every: QR re-orthonormalization period in steps (official 5; 0 disables).
        grassmann: default of the groups' ``grassmann`` flag (``True``: Riemannian step on orthonormal bases).

    Every group — given to the constructor or added later with :meth:`add_param_group` — is checked the same
    way (hyper-parameters in range, a known retraction, orthonormal Grassmann bases); a bad one is a one-line
    ``ValueError`` naming the group and the optimizer is left unchanged.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        *,
        retraction: str = "exp",
        reorth_every: int = 5,
        grassmann: bool = True,
    ) -> None:
        _check_hyper(
            dict(
                lr=lr,
                momentum=momentum,
                dampening=dampening,
                weight_decay=weight_decay,
                retraction=retraction,
                reorth_every=reorth_every,
                grassmann=grassmann,
            ),
            "",
        )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            retraction=retraction,
            reorth_every=reorth_every,
            grassmann=grassmann,
        )
        super().__init__(params, defaults)  # every group goes through add_param_group (checked there)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group after the same checks as the constructor: hyper-parameters in range, a known
        retraction, and for ``grassmann`` groups ``[..., d, k]`` parameters (``k ≤ d``) with orthonormal columns
        (max ``|SᵀS − I|`` ≤ 1e-3). A group that fails raises a one-line ``ValueError`` and is not added (the
        optimizer is left unchanged).

        Example:
            >>> opt = GrassmannSGD([torch.nn.Parameter(qr_basis(torch.randn(6, 2)))], lr=0.1)
            >>> opt.add_param_group({"params": [torch.randn(6, 2) * 3]})
            Traceback (most recent call last):
            ...
            ValueError: GrassmannSGD: Grassmann parameter 0 of group 1 does not have orthonormal columns ...
            >>> len(opt.param_groups)
            1
        """
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError(
                f"GrassmannSGD: a param group must be a dict with 'params', got {type(param_group).__name__}"
            )
        group = dict(
            param_group
        )  # the caller's dict is not modified; torch fills the defaults into this copy
        params = group["params"]
        if not isinstance(params, set):  # a set is refused by torch below with its own TypeError
            group["params"] = [params] if isinstance(params, Tensor) else list(params)
        gi = len(self.param_groups)
        merged = {**self.defaults, **{k: v for k, v in group.items() if k in self.defaults}}
        _check_hyper(merged, f"param group {gi}: ")
        if merged["grassmann"] and not isinstance(params, set):
            tensors = [q[1] if isinstance(q, tuple) and len(q) == 2 else q for q in group["params"]]
            for pi, p in enumerate(tensors):
                if isinstance(p, Tensor):
                    _check_basis(p, pi, gi)
        super().add_param_group(group)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        updates: list[tuple[Tensor, Tensor, Tensor | None, int | None]] = []
        for group in self.param_groups:
            lr, mu, damp = group["lr"], group["momentum"], group["dampening"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("GrassmannSGD: sparse gradients are not supported")
                state = self.state[p]
                d_p = p.grad
                if not torch.isfinite(d_p).all():
                    raise ValueError(
                        f"GrassmannSGD: non-finite gradient for a parameter of shape {tuple(p.shape)}; "
                        "parameters and state left unchanged"
                    )
                if not group["grassmann"] and group["weight_decay"] != 0:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                buf = None
                if mu != 0:
                    old = state.get("momentum_buffer")
                    buf = d_p.clone() if old is None else old.mul(mu).add_(d_p, alpha=1 - damp)
                    d_p = buf
                count = None
                if group["grassmann"]:
                    count = int(state.get("step", 0)) + 1
                    T = tangent_projection(p, d_p)
                    new = grassmann_retract(p, T, -lr, group["retraction"])
                    k = group["reorth_every"]
                    if k and count % k == 0 and group["retraction"] == "exp":
                        new = qr_basis(new)  # type: ignore[assignment]
                else:
                    new = p.add(d_p, alpha=-lr)
                updates.append((p, new, buf, count))
        for p, new, buf, _ in updates:
            if not torch.isfinite(new).all() or (buf is not None and not torch.isfinite(buf).all()):
                raise ValueError(
                    f"GrassmannSGD: step would write non-finite values into a parameter of shape {tuple(p.shape)}; "
                    "parameters and state left unchanged"
                )
        for p, new, buf, count in updates:
            p.copy_(new)
            if buf is not None:
                self.state[p]["momentum_buffer"] = buf
            if count is not None:
                self.state[p]["step"] = count
        return loss

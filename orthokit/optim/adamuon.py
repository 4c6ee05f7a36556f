"""AdaMuon — adaptive Muon with an element-wise second moment on the orthogonal update (Si, Zhang, Shen;
arXiv:2507.11005).

Update for ``W ∈ R^{m×n}`` (official code ``github.com/Chongjie-Si/AdaMuon``, ``adamuon.py``)::

    M ← μ M + (1−μ) G ;  U = (1−μ) G + μ M               (EMA momentum, Nesterov)
    O ← polar(U)            [paper v2/v3: O ← polar(sign(U)), "sign-stabilized"]
    v ← β₂ v + (1−β₂) O ⊙ O                               (element-wise, v ∈ R^{m×n})
    O ← O / (sqrt(v / (1−β₂ᵗ)) + ε)
    O ← O · sqrt(min(m, n)) / (‖O‖_F + ε)                 (norm of a semi-orthogonal matrix)
    W ← W(1 − ηλ) − η·0.2·sqrt(max(m, n))·O               (⇒ update RMS 0.2·η, "RMS-aligned" with Adam)

The official code implements the paper's v1 (no sign step); the v2/v3 paper adds the sign stabilization,
available here as ``sign_stabilize=True``. Defaults of the official code: lr 0.02, wd 0.01, momentum 0.95,
β₂ 0.999, ε 1e-8. Reported: ">40% training efficiency over Adam in large-scale scenarios".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from orthokit.optim._normalizers import (
    check_positive,
    check_unit_interval,
    rescale_to_norm,
    second_moment_normalize,
    state_dtype,
)
from orthokit.optim.base import OrthogonalOptimizer
from orthokit.optim.muon import validate_muon_kwargs
from orthokit.optim.registry import register_optimizer
from orthokit.optim.transforms import (
    Transform,
    decoupled_weight_decay,
    momentum,
    orthogonalize,
    scale_by_shape,
)

__all__ = ["AdaMuon", "adamuon_normalize", "sign_stabilize", "sign_input", "elementwise_normalize"]


def sign_stabilize(u: torch.Tensor) -> torch.Tensor:
    """AdaMuon v2's sign stabilization of the polar input: ``sign(U)`` (entries in {−1, 0, +1}).

    Example:
        >>> sign_stabilize(torch.tensor([[-0.3, 0.0, 2.0]]))
        tensor([[-1.,  0.,  1.]])
    """
    return torch.sign(u)


def adamuon_normalize(
    o: torch.Tensor, v: torch.Tensor, step: int, beta2: float = 0.999, eps: float = 1e-8
) -> torch.Tensor:
    r"""AdaMuon's element-wise second-moment normalization + RMS alignment (``v`` updated in place).

    .. math::
        v \leftarrow \beta_2 v + (1-\beta_2) O\odot O,\quad
        \tilde O = O / (\sqrt{v/(1-\beta_2^t)} + \epsilon),\quad
        O' = \tilde O\,\sqrt{\min(m,n)} / (\|\tilde O\|_F + \epsilon)

    Multiplying ``O'`` by ``0.2·sqrt(max(m, n))`` (the ``"match_rms_adamw"`` shape factor) gives an update
    with RMS exactly 0.2 — AdaMuon's "RMS-aligned" step.

    Args:
        o: orthogonalized update ``[..., m, n]``.
        v: float32/float64 state ``[..., m, n]`` (zeros at step 0).
        step: 1-based step count (bias correction).
        beta2: EMA coefficient (official 0.999).
        eps: stabilizer (official 1e-8).

    Example:
        >>> o = torch.linalg.qr(torch.randn(12, 5)).Q
        >>> out = adamuon_normalize(o, torch.zeros(12, 5), step=1)
        >>> round(float(out.norm()) ** 2, 3)  # min(m, n) = 5
        5.0

    Ref: arXiv:2507.11005; github.com/Chongjie-Si/AdaMuon.
    """
    if o.dim() < 2:
        raise ValueError(f"AdaMuon normalizes matrices [..., m, n], got shape {tuple(o.shape)}")
    if v.shape != o.shape:
        raise ValueError(f"AdaMuon second-moment state has shape {tuple(v.shape)}, expected {tuple(o.shape)}")
    y = second_moment_normalize(o, v, beta2, reduce_last=False, eps=eps, step=step)
    target = math.sqrt(min(o.shape[-2], o.shape[-1]))
    return rescale_to_norm(y, target, eps=eps).to(o.dtype)


class sign_input(Transform):
    """Transform: ``U ← sign(U)`` before the polar factor (AdaMuon v2's sign stabilization).

    Example:
        >>> sign_input().update([torch.tensor([[-0.5, 2.0]])], [{}], [torch.zeros(1, 2)], {})[0]
        tensor([[-1.,  1.]])
    """

    name = "sign_input"
    touches_params = False

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        return [torch.sign(u) for u in updates]


class elementwise_normalize(Transform):
    """Transform: AdaMuon's element-wise second moment + ``sqrt(min(m, n))`` Frobenius rescale per matrix view.

    State: ``exp_avg_sq`` (float32/float64, parameter-shaped) and ``adamuon_step`` (0-d float32 counter).
    Reads ``beta2`` and ``eps`` from the group.

    Example:
        >>> t = elementwise_normalize()
        >>> sorted(t.init(torch.zeros(3, 2), {}))
        ['adamuon_step', 'exp_avg_sq']
    """

    name = "elementwise_normalize"
    touches_params = False
    state_keys = ("exp_avg_sq", "adamuon_step")

    def init(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {
            "exp_avg_sq": torch.zeros(param.shape, dtype=state_dtype(param.dtype), device=param.device),
            "adamuon_step": torch.tensor(0.0, dtype=torch.float32),
        }

    def update(
        self, updates: list[Tensor], states: list[dict[str, Any]], params: list[Tensor], group: dict[str, Any]
    ) -> list[Tensor]:
        out = []
        for u, st, p in zip(updates, states, params):
            v = self._view(p)
            st["adamuon_step"].add_(1.0)
            step = int(st["adamuon_step"].item())
            vm = st["exp_avg_sq"].view(v.mats, v.m, v.n)
            o = adamuon_normalize(v.as_matrices(u), vm, step, group["beta2"], group["eps"])
            out.append(o.reshape(v.shape))
        return out


@register_optimizer(
    "adamuon",
    default_lr=0.1,
    state_keys=("momentum_buffer", "exp_avg_sq", "adamuon_step"),
    supports_batched=True,
    supports_distributed=True,
    direction="polar",
    direction_at="orthogonalize",
    paper="Si, Zhang, Shen 2025, arXiv:2507.11005",
)
class AdaMuon(OrthogonalOptimizer):
    """AdaMuon: element-wise second moment on the orthogonalized update, RMS-aligned to Adam.

    Chain: ``momentum → [sign_input] → orthogonalize → elementwise_normalize → scale_by_shape →
    decoupled_weight_decay`` (see the module docstring for the equations). With the default
    ``scale="match_rms_adamw"`` every update has RMS exactly ``0.2·lr``.

    Args:
        params: parameters / ``(name, param)`` pairs / param groups.
        lr: learning rate (official 0.02).
        momentum: β₁ (0.95).
        beta2: element-wise second-moment β₂ (0.999).
        eps: stabilizer (1e-8).
        sign_stabilize: orthogonalize ``sign(U)`` (paper v2/v3) instead of ``U`` (official code, v1).
        weight_decay: decoupled λ (official 0.01).
        nesterov, momentum_convention, ns_method, ns_steps, ns_dtype, scale, skip_nonfinite, batched,
            distributed, process_group: as in :class:`orthokit.optim.Muon`.

    Example:
        >>> model = torch.nn.Linear(16, 32, bias=False)
        >>> opt = AdaMuon(model.parameters(), lr=0.02, sign_stabilize=True)
        >>> model(torch.randn(4, 16)).square().mean().backward(); opt.step()

    Ref: Si, Zhang, Shen 2025, arXiv:2507.11005; github.com/Chongjie-Si/AdaMuon.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | torch.Tensor = 0.02,
        momentum: float = 0.95,
        beta2: float = 0.999,
        eps: float = 1e-8,
        sign_stabilize: bool = False,
        nesterov: bool = True,
        momentum_convention: str = "ema",
        weight_decay: float = 0.01,
        ns_method: str = "polar_express",
        ns_steps: int | None = None,
        ns_dtype: torch.dtype | str | None = "auto",
        scale: str = "match_rms_adamw",
        skip_nonfinite: bool = False,
        batched: bool = True,
        distributed: bool | str = False,
        process_group: Any = None,
        fallback: str = "adamw",
        fallback_lr: float | torch.Tensor | None = None,
        fallback_betas: tuple[float, float] = (0.9, 0.95),
        fallback_eps: float = 1e-8,
        fallback_weight_decay: float | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            beta2=beta2,
            eps=eps,
            sign_stabilize=sign_stabilize,
            nesterov=nesterov,
            momentum_convention=momentum_convention,
            weight_decay=weight_decay,
            ns_method=ns_method,
            ns_steps=ns_steps,
            ns_dtype=ns_dtype,
            scale=scale,
            batched=batched,
        )
        super().__init__(
            params,
            defaults,
            skip_nonfinite=skip_nonfinite,
            distributed=distributed,
            process_group=process_group,
            fallback=fallback,
            fallback_lr=fallback_lr,
            fallback_betas=fallback_betas,
            fallback_eps=fallback_eps,
            fallback_weight_decay=fallback_weight_decay,
        )

    def validate_group(self, group: dict[str, Any]) -> None:
        """Muon's checks plus ``beta2`` ∈ [0, 1), ``eps`` > 0, ``sign_stabilize`` bool."""
        super().validate_group(group)
        if group["algorithm"] == "ortho":
            validate_muon_kwargs(group)
            check_unit_interval("beta2", group["beta2"])
            check_positive("eps", group["eps"])
            if not isinstance(group["sign_stabilize"], bool):
                raise TypeError(
                    f"sign_stabilize must be a bool, got {type(group['sign_stabilize']).__name__}"
                )

    def transforms(self, group: dict[str, Any]) -> Sequence[Transform]:
        """``momentum → [sign_input] → orthogonalize → elementwise_normalize → scale_by_shape → weight decay``."""
        chain: list[Transform] = [
            momentum(group["momentum"], group["nesterov"], group["momentum_convention"])
        ]
        if group["sign_stabilize"]:
            chain.append(sign_input())
        chain += [
            orthogonalize(group["ns_method"], group["ns_steps"], group["ns_dtype"], group["batched"]),
            elementwise_normalize(),
            scale_by_shape(group["scale"]),
            decoupled_weight_decay(),
        ]
        return chain

r"""Learned rotations for quantization: SpinQuant (Cayley SGD on R1/R2) and OstQuant (R1 + scalings, KL-Top).

**SpinQuant** (Liu et al., arXiv 2405.16406; ``facebookresearch/SpinQuant`` ``optimize_rotation.py``,
``train_utils/``): the residual rotation ``R1`` (hidden × hidden) and one value-head rotation ``R2``
(head_dim × head_dim) **per layer** (``model.layers[i].self_attn.R2`` in the reference) are learned, starting from a randomized Hadamard, by :class:`~orthokit.rotation.cayley_sgd.
CayleySGD` on the Stiefel manifold, minimizing the next-token cross-entropy of the **quantized** network: the
rotated weights (:func:`~orthokit.rotation._functional.rotate_llama_params`, pure and differentiable) are
fake-quantized per output channel, every decoder linear's input is fake-quantized per token, both through a
straight-through estimator (``ste``: forward value quantized, gradient identity), and with activations quantized
(``a_bits < 16``) a fixed online Hadamard ``R4`` precedes ``down_proj`` (its transpose fused into the weight), as in
SpinQuant. ``R4`` (and ``R3`` on q/k when ``kv_bits < 16``) are exactly the rotations
:meth:`LearnedRotation.apply` → :func:`~orthokit.rotation.rewrite.rotate_model` installs (randomized Hadamards with
seeds ``derive_seed(seed, "R4"|"R3")``), so the deployed model quantizes what the learning forward quantized. The model weights stay frozen; only the rotations train. The head (``lm_head``) and embeddings stay in
16 bits (SpinQuant's recipe).

**OstQuant** (Hu et al., arXiv 2501.13987; ``method="ostquant"``): ``R1`` (and ``R2``) by Cayley SGD plus positive
diagonal scalings ``s = exp(θ)`` (:class:`~orthokit.rotation.ostquant.OstQuantScales`: norm–linear, up/down,
value/output) by Adam, with the KL-Top loss (:func:`~orthokit.rotation.ostquant.kl_top`) against the
full-precision model. Everything is an exact equivalent transform: :meth:`LearnedRotation.apply` rotates and
scales a model through :func:`~orthokit.rotation.rewrite.rotate_model`, which proves the rotated fp32 model equal
to the original.

The quantized loss, in symbols: ``L(R1, R2, s) = E_batch ℓ(f(x; Q_w(Θ(R1, R2, s)), Q_a))`` with ``Θ`` the
rotated/scaled parameters, ``Q_w``/``Q_a`` the STE fake quantizers and ``ℓ`` the CE or KL-Top loss.

Deviations (also in ``docs/rotation/learn.md``): fp32 instead of bf16, CPU-sized steps/batches, the final ``R1``/``R2`` projected to the
nearest orthogonal matrix in float64 (the 5-iteration Cayley loop drifts by up to ~1e-4 at ``lr = 1.5``; the drift
before projection is recorded).

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from orthokit.rotation.learn import learn_rotation
    >>> cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    ...                   vocab_size=64)
    >>> m = LlamaForCausalLM(cfg).eval()
    >>> calib = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    >>> lr = learn_rotation(m, calib, a_bits=4, steps=3, batch_size=2)
    >>> lr.r1.shape, lr.r2.shape, len(lr.losses)  # R2: one per layer
    (torch.Size([32, 32]), torch.Size([1, 16, 16]), 3)
    >>> float((lr.r1 @ lr.r1.T - torch.eye(32, dtype=torch.float64)).abs().max()) < 1e-12
    True
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthokit.rotation._functional import fuse_llama_norms, llama_dims, rotate_llama_params
from orthokit.rotation.base import Rotation
from orthokit.rotation.bert import derive_seed
from orthokit.rotation.cayley_sgd import CayleySGD
from orthokit.rotation.ostquant import DEFAULT_TOP_K, OstQuantScales, kl_top
from orthokit.rotation.quant import check_bits, quantize_activation, quantize_kv, quantize_weight, ste
from orthokit.rotation.registry import make_rotation

__all__ = ["LearnedRotation", "QuantizedForward", "learn_rotation", "quantized_loss"]

_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj")  # fmt: skip
_OBJECTIVES = ("ce", "kl_top")
_METHODS = ("spinquant", "ostquant")


def _check_calib(calib: Any, vocab: int) -> Tensor:
    if isinstance(calib, (list, tuple)):
        if not calib or not all(isinstance(c, Tensor) for c in calib):
            raise TypeError("calib: expected a LongTensor (batch, seq) or a non-empty list of them")
        calib = (
            torch.cat([c.reshape(-1, c.shape[-1]) for c in calib])
            if len({c.shape[-1] for c in calib}) == 1
            else None
        )
        if calib is None:
            raise ValueError("calib: all sequences in the list must have the same length")
    if not isinstance(calib, Tensor):
        raise TypeError(f"calib: expected a LongTensor (batch, seq) of token ids, got {type(calib).__name__}")
    if (
        calib.dtype not in (torch.int64, torch.int32)
        or calib.dim() != 2
        or calib.shape[1] < 2
        or calib.shape[0] < 1
    ):
        raise ValueError(
            f"calib: expected integer token ids of shape (batch, seq >= 2), got {calib.dtype} {tuple(calib.shape)}"
        )
    if int(calib.min()) < 0 or int(calib.max()) >= vocab:
        raise ValueError(
            f"calib: token ids must lie in [0, {vocab}), got [{int(calib.min())}, {int(calib.max())}]"
        )
    return calib.long()


class QuantizedForward:
    """A frozen, norm-fused float32 copy of a Llama-family model whose forward takes rotations (and scales) and
    runs with fake-quantized weights and linear inputs (straight-through), as SpinQuant/OstQuant train it.

    Args:
        model: a Llama/Mistral/Qwen2 ``*ForCausalLM`` (not modified).
        w_bits, a_bits, kv_bits: weight / activation / KV-cache bits (16 = not quantized). With ``kv_bits < 16``
            attention runs through the ``"orthokit"`` implementation with an online Hadamard ``R3`` on q/k
            (post-RoPE) and asymmetric per-head, per-token K/V fake quantization (straight-through).
        group_size: weight group size (``None``: per output channel). kv_group_size: K/V group (``None``: head_dim).
        w_sym, a_sym: symmetric weight grid (default) / activation grid (default asymmetric, SpinQuant's recipe).
        a_clip: activation clip ratio (QuaRot ``a_clip_ratio``).
        r4_seed: seed of the online randomized Hadamard before ``down_proj`` (used when ``a_bits < 16``);
            ``rotate_model(seed=s)`` installs the one with ``r4_seed = derive_seed(s, "R4")``.
        r3_seed: seed of the online randomized Hadamard on q/k (used when ``kv_bits < 16``); ``rotate_model``'s is
            ``derive_seed(s, "R3")``.
    """

    def __init__(self, model: nn.Module, *, w_bits: int = 16, a_bits: int = 16, kv_bits: int = 16,
                 group_size: int | None = None, w_sym: bool = True, a_sym: bool = False, a_clip: float = 1.0,
                 kv_group_size: int | None = None, r4_seed: int = 0, r3_seed: int = 0) -> None:  # fmt: skip
        self.w_bits, self.a_bits = check_bits(w_bits, "w_bits"), check_bits(a_bits, "a_bits")
        self.kv_bits, self.kv_group_size = check_bits(kv_bits, "kv_bits"), kv_group_size
        self.group_size, self.w_sym, self.a_sym, self.a_clip = group_size, w_sym, a_sym, a_clip
        self.config = model.config
        self.dims = llama_dims(model.config)
        work = copy.deepcopy(model).float().eval()
        fuse_llama_norms(work)
        for p in work.parameters():
            p.requires_grad_(False)
        self.model = work
        self.fused = {k: v.detach() for k, v in work.state_dict().items()}
        layers = work.model.layers
        self.weight_keys = [f"model.layers.{i}.{n}.weight" for i in range(len(layers)) for n in _LINEARS]
        self.r4 = (
            make_rotation("hadamard", self.dims.intermediate, seed=r4_seed) if self.a_bits < 16 else None
        )
        self._h4 = None if self.r4 is None else self.r4.matrix(torch.float32)
        for layer in layers:
            for n in _LINEARS:
                mod = layer.get_submodule(n)
                mod.register_forward_pre_hook(self._make_hook(n == "mlp.down_proj"))
        self.r3 = None
        self._kv_on = self.kv_bits < 16
        if (
            self.kv_bits < 16
        ):  # R3 (online Hadamard on q/k after RoPE) + per-head STE KV fake-quant, like SpinQuant
            from orthokit.rotation.attention import install_attention

            self.r3 = make_rotation("hadamard", self.dims.head_dim, seed=r3_seed)
            install_attention(work)
            for layer in layers:
                layer.self_attn._orthokit_qk_rotation = self.r3
                layer.self_attn._orthokit_kv_quant = self._kv_quant

    def _kv_quant(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if not self._kv_on:
            return k, v
        kq, vq = quantize_kv(k.detach(), v.detach(), self.kv_bits, group_size=self.kv_group_size, sym=False)
        return ste(k, kq), ste(v, vq)

    def _make_hook(self, is_down: bool) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0]
            if is_down and self._h4 is not None:
                x = x @ self._h4
            if self.a_bits < 16:
                x = ste(
                    x, quantize_activation(x.detach(), self.a_bits, sym=self.a_sym, clip_ratio=self.a_clip)
                )
            return (x, *args[1:])

        return hook

    def params(
        self, r1: Tensor, r2: Tensor | None = None, scales: dict[str, Any] | None = None
    ) -> dict[str, Tensor]:
        """Rotated (scaled), R4-fused, fake-quantized parameters; differentiable in ``r1``, ``r2`` and the scales.
        ``r2``: one ``(head_dim, head_dim)`` matrix, a ``(n_layers, head_dim, head_dim)`` stack or a list per layer."""
        out = rotate_llama_params(self.fused, self.config, r1, r2, **(scales or {}))
        for key in self.weight_keys:
            w = out[key]
            if self._h4 is not None and ".mlp.down_proj." in key:
                w = w @ self._h4.to(w.dtype)
            if self.w_bits < 16:
                w = ste(
                    w, quantize_weight(w.detach(), self.w_bits, group_size=self.group_size, sym=self.w_sym)
                )
            out[key] = w
        return out

    def logits(self, params: dict[str, Tensor], ids: Tensor) -> Tensor:
        """Logits of the quantized model with ``params`` on token ids ``(batch, seq)``."""
        return torch.func.functional_call(self.model, params, (ids,), {"use_cache": False}).logits

    @torch.no_grad()
    def fp_logits(self, ids: Tensor) -> Tensor:
        """Full-precision (unquantized, unrotated) logits — the KL target; hooks bypassed."""
        saved = self.a_bits, self._h4, self._kv_on
        self.a_bits, self._h4, self._kv_on = 16, None, False
        try:
            return self.model(ids, use_cache=False).logits
        finally:
            self.a_bits, self._h4, self._kv_on = saved


def _loss(objective: str, logits: Tensor, ids: Tensor, fp: Tensor | None, top_k: int) -> Tensor:
    if objective == "ce":
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert fp is not None
    return kl_top(fp, logits, k=top_k)


def quantized_loss(qf: QuantizedForward, calib: Tensor, r1: Tensor, r2: Tensor | None = None,
                   scales: dict[str, Any] | None = None, *, objective: str = "kl_top", top_k: int = DEFAULT_TOP_K,
                   batch_size: int = 8) -> float:  # fmt: skip
    """Mean quantized loss (``"ce"`` or ``"kl_top"``; ``top_k=vocab`` gives the full KL) of rotations on ``calib``."""
    if objective not in _OBJECTIVES:
        raise ValueError(f"objective: expected one of {_OBJECTIVES}, got {objective!r}")
    calib = _check_calib(calib, int(qf.config.vocab_size))
    dt = torch.float32
    total, count = 0.0, 0
    with torch.no_grad():
        params = qf.params(r1.to(dt), None if r2 is None else r2.to(dt), scales)
        for ids in calib.split(batch_size):
            fp = qf.fp_logits(ids) if objective == "kl_top" else None
            total += float(_loss(objective, qf.logits(params, ids), ids, fp, top_k)) * ids.shape[0]
            count += ids.shape[0]
    return total / count


def _orth_error(r: Tensor) -> float:
    r64 = r.detach().to(torch.float64)
    return float((r64 @ r64.mT - torch.eye(r64.shape[-1], dtype=torch.float64)).abs().max())


def _nearest_orthogonal(r: Tensor) -> tuple[Tensor, float]:
    """Polar factor ``U Vᵀ`` (batched over leading dims) and the orthogonality error before projection."""
    r64 = r.detach().to(torch.float64)
    u, _, vh = torch.linalg.svd(r64)
    return u @ vh, _orth_error(r64)


@dataclass
class LearnedRotation:
    """The result of :func:`learn_rotation`: rotations (float64, orthogonal), optional scales, loss curve, metadata.

    Attributes:
        r1: ``(hidden, hidden)`` residual rotation. r2: value-head rotations, ``(n_layers, head_dim, head_dim)``
            (one per layer, the default), ``(head_dim, head_dim)`` (``r2="shared"``) or ``None``.
        scales: ``None`` or ``{"norm_scales": ..., "ffn_scales": ..., "ov_scales": ...}`` (OstQuant), float64.
        losses: the training loss per step. meta: method, objective, bits, seeds, lrs, steps, time, drift.
    """

    r1: Tensor
    r2: Tensor | None = None
    scales: dict[str, Any] | None = None
    losses: list[float] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def apply(self, model: nn.Module, **rotate_kwargs: Any) -> tuple[nn.Module, Any]:
        """``rotate_model(model, rotation=r1, r2=r2 or False, scales=scales, seed=meta["seed"], **rotate_kwargs)``
        — exact, proven. The default ``seed`` is the learning seed, so the online ``R4``/``R3`` installed are the
        ones the quantized learning forward used."""
        from orthokit.rotation.rewrite import rotate_model

        r2: Any = self.r2 if self.r2 is not None else False
        rotate_kwargs.setdefault("seed", int(self.meta.get("seed", 0)))
        return rotate_model(model, rotation=self.r1, r2=r2, scales=self.scales, **rotate_kwargs)

    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers and strings only (``torch.save``-able; no generator state)."""
        return {
            "r1": self.r1.clone(),
            "r2": None if self.r2 is None else self.r2.clone(),
            "scales": None if self.scales is None else {k: dict(v) for k, v in self.scales.items()},
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> LearnedRotation:
        """Inverse of :meth:`state_dict` (``r1``/``r2`` re-checked to be orthogonal to 1e-6)."""
        if not isinstance(d, dict) or not isinstance(d.get("r1"), Tensor):
            raise ValueError("LearnedRotation state: expected a dict with an 'r1' tensor")
        r1 = d["r1"].to(torch.float64)
        r2 = d.get("r2")
        for name, r in (("r1", r1), ("r2", r2)):
            if r is not None:
                r = r.to(torch.float64)
                ok_shape = r.dim() in (2, 3 if name == "r2" else 2) and r.shape[-1] == r.shape[-2]
                err = _orth_error(r) if ok_shape else float("inf")
                if not ok_shape or err > 1e-6:
                    raise ValueError(
                        f"LearnedRotation state: {name!r} is not an orthogonal matrix (error {err:.1e})"
                    )
        losses = d.get("losses")
        return cls(
            r1=r1,
            r2=None if r2 is None else r2.to(torch.float64),
            scales=d.get("scales"),
            losses=[] if losses is None else [float(x) for x in losses],
            meta=dict(d.get("meta") or {}),
        )


def _r2_mode(r2: Any) -> str:
    if r2 is True:
        return "per_layer"
    if isinstance(r2, str):
        if r2 in ("per_layer", "shared"):
            return r2
        raise ValueError(f"r2: expected True, 'per_layer', 'shared', False or a fixed rotation, got {r2!r}")
    if r2 is False or r2 is None:
        return "none"
    if isinstance(r2, (Tensor, Rotation, list, tuple)):
        return "fixed"
    raise TypeError(
        f"r2: expected a bool, 'per_layer', 'shared', a Tensor, a Rotation or a list, got {type(r2).__name__}"
    )


def _fixed_r2(r2: Any, dims: Any, seed: int) -> Tensor:
    """A fixed (not learned) R2 as float32: ``(head_dim, head_dim)`` or ``(n_layers, head_dim, head_dim)``."""
    if isinstance(r2, Tensor) and r2.dim() == 3:
        if r2.shape[0] != dims.n_layers:
            raise ValueError(f"r2: expected {dims.n_layers} per-layer matrices, got {r2.shape[0]}")
        r2 = list(r2.unbind(0))
    if isinstance(r2, (list, tuple)):
        if len(r2) != dims.n_layers:
            raise ValueError(f"r2: expected one rotation per layer ({dims.n_layers}), got {len(r2)}")
        return torch.stack(
            [_init_matrix(r, dims.head_dim, seed, f"r2[{i}]") for i, r in enumerate(r2)]
        ).float()
    return _init_matrix(r2, dims.head_dim, seed + 1, "r2").float()


def _init_matrix(spec: Any, n: int, seed: int, name: str) -> Tensor:
    try:
        rot = make_rotation(spec, n, seed=seed)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if not isinstance(rot, Rotation):  # pragma: no cover - make_rotation contract
        raise TypeError(f"{name}: could not build a rotation")
    return rot.matrix(torch.float64)


def learn_rotation(
    model: nn.Module,
    calib: Tensor | list[Tensor],
    *,
    method: str = "spinquant",
    objective: str | None = None,
    w_bits: int = 16,
    a_bits: int = 4,
    kv_bits: int = 16,
    group_size: int | None = None,
    steps: int = 100,
    lr: float = 1.5,
    scale_lr: float = 1e-2,
    seed: int = 0,
    init: Any = "hadamard",
    r2: bool | str | Any = True,
    batch_size: int = 4,
    top_k: int = DEFAULT_TOP_K,
    a_sym: bool = False,
    a_clip: float = 1.0,
    log: Callable[[int, float], None] | None = None,
) -> LearnedRotation:
    """Learn R1 (and R2, and OstQuant scales) minimizing the quantized model's loss on ``calib``.

    Args:
        model: a Llama-family ``*ForCausalLM`` (Llama, Mistral, Qwen2); never modified.
        calib: token ids ``(batch, seq)`` (or a list of equal-length ones).
        method: ``"spinquant"`` (rotations only) or ``"ostquant"`` (rotations + scalings).
        objective: ``"ce"`` (next-token cross-entropy, SpinQuant) or ``"kl_top"`` (OstQuant); default per method.
        w_bits, a_bits, kv_bits: bits (16 = off); ``kv_bits < 16`` adds R3 and STE KV fake-quant (see
            :class:`QuantizedForward`).
        group_size: weight quantization group size (``None``: per output channel).
        steps: optimizer steps (SpinQuant: 100); one mini-batch per step, cycling through a seeded shuffle.
        lr: Cayley SGD lr for the rotations (SpinQuant: 1.5), cosine-annealed to 0 over ``steps``.
        scale_lr: Adam lr for the OstQuant log-scales (cosine-annealed too; an orthokit choice).
        seed: seeds the init rotations (R1 with ``seed``; R2 of layer ``i`` with ``derive_seed(seed, "R2.{i}")``, a
            shared R2 with ``seed + 1``), the batch order, and the online ``R4``/``R3`` exactly as ``rotate_model(
            seed=seed)`` derives them (``derive_seed(seed, "R4"|"R3")``).
        init: R1/R2 initialization, any ``make_rotation`` spec (default the randomized Hadamard, as SpinQuant).
        r2: ``True`` / ``"per_layer"`` (default): learn one R2 per layer from ``init`` (SpinQuant's reference);
            ``"shared"``: learn one R2 shared by every layer; ``False``: none; a ``(head_dim, head_dim)`` or
            ``(n_layers, head_dim, head_dim)`` tensor, a Rotation or a per-layer list: a fixed R2 (not learned).
        batch_size: sequences per step. top_k: ``k`` of KL-Top. a_sym/a_clip: activation grid options.
        log: optional ``log(step, loss)`` callback.

    Returns:
        a :class:`LearnedRotation`.
    """
    if method not in _METHODS:
        raise ValueError(f"method: expected one of {_METHODS}, got {method!r}")
    objective = objective if objective is not None else ("ce" if method == "spinquant" else "kl_top")
    if objective not in _OBJECTIVES:
        raise ValueError(f"objective: expected one of {_OBJECTIVES}, got {objective!r}")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("top_k", top_k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    for name, v in (("lr", lr), ("scale_lr", scale_lr)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if getattr(getattr(model, "model", None), "layers", None) is None or not hasattr(model, "config"):
        raise ValueError(
            f"model: {type(model).__name__} is not a Llama-family *ForCausalLM (no .model.layers)"
        )
    dims = llama_dims(model.config)
    calib = _check_calib(calib, int(model.config.vocab_size))
    t0 = time.perf_counter()
    r2_mode = _r2_mode(r2)
    r4_seed, r3_seed = derive_seed(seed, "R4"), derive_seed(seed, "R3")  # = rotate_model(seed=seed)'s R4/R3
    qf = QuantizedForward(model, w_bits=w_bits, a_bits=a_bits, kv_bits=kv_bits, group_size=group_size,
                          a_sym=a_sym, a_clip=a_clip, r4_seed=r4_seed, r3_seed=r3_seed)  # fmt: skip
    r1 = nn.Parameter(_init_matrix(init, dims.hidden, seed, "init").float())
    rot_params = [r1]
    r2_layers: list[Tensor] = []
    r2_param: Tensor | None = None
    if r2_mode == "per_layer":
        r2_layers = [
            nn.Parameter(_init_matrix(init, dims.head_dim, derive_seed(seed, f"R2.{i}"), "init").float())
            for i in range(dims.n_layers)
        ]
        rot_params += r2_layers
    elif r2_mode == "shared":
        r2_param = nn.Parameter(_init_matrix(init, dims.head_dim, seed + 1, "init").float())
        rot_params.append(r2_param)
    elif r2_mode == "fixed":
        r2_param = _fixed_r2(r2, dims, seed)
    opt = CayleySGD(rot_params, lr=lr)
    opts: list[torch.optim.Optimizer] = [opt]
    scales = OstQuantScales(dims) if method == "ostquant" else None
    if scales is not None:
        opts.append(torch.optim.Adam(scales.parameters(), lr=scale_lr))
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, steps) for o in opts]
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(calib.shape[0], generator=gen)
    fp_cache: dict[int, Tensor] = {}
    losses: list[float] = []
    pos = 0
    for step in range(steps):
        idx = order[[(pos + j) % len(order) for j in range(min(batch_size, len(order)))]]
        pos = (pos + len(idx)) % len(order)
        ids = calib[idx]
        fp = None
        if objective == "kl_top":
            fp = torch.cat([fp_cache.setdefault(int(i), qf.fp_logits(calib[int(i)][None])) for i in idx])
        for o in opts:
            o.zero_grad(set_to_none=True)
        r2_now: Any = r2_layers if r2_layers else r2_param
        params = qf.params(r1, r2_now, None if scales is None else scales.as_kwargs())
        loss = _loss(objective, qf.logits(params, ids), ids, fp, top_k)
        if not torch.isfinite(loss):
            raise ValueError(f"learn_rotation: non-finite loss at step {step}; lower lr or check the model")
        loss.backward()
        for o in opts:
            o.step()
        for s in scheds:
            s.step()
        losses.append(float(loss.detach()))
        if log is not None:
            log(step, losses[-1])
    r1_out, drift1 = _nearest_orthogonal(r1)
    if r2_layers:
        r2_out, drift2 = _nearest_orthogonal(torch.stack([r.detach() for r in r2_layers]))
    elif r2_param is not None:
        r2_out, drift2 = _nearest_orthogonal(r2_param)
    else:
        r2_out, drift2 = None, 0.0
    meta = {
        "method": method, "objective": objective, "w_bits": w_bits, "a_bits": a_bits, "kv_bits": kv_bits,
        "group_size": group_size, "steps": steps, "lr": lr, "scale_lr": scale_lr, "seed": seed,
        "init": init if isinstance(init, str) else type(init).__name__, "r2_mode": r2_mode,
        "r2_learned": r2_mode in ("per_layer", "shared"),
        "batch_size": batch_size, "top_k": top_k, "r4_seed": r4_seed if a_bits < 16 else None,
        "r3_seed": r3_seed if kv_bits < 16 else None,
        "orthogonality_drift": max(drift1, drift2), "time_s": time.perf_counter() - t0,
    }  # fmt: skip
    return LearnedRotation(
        r1=r1_out, r2=r2_out, scales=None if scales is None else scales.export(), losses=losses, meta=meta
    )

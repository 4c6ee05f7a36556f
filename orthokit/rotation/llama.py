r"""The Llama-family rewriter (LlamaForCausalLM/LlamaModel, Mistral, Qwen2): R1, R2 offline; R3, R4 online.

Sites (QuaRot arXiv 2404.00456 §4, SpinQuant arXiv 2405.16406 Fig. 1; the math is in
:mod:`orthokit.rotation._functional`):

- **R1** (offline, ``hidden × hidden``): every RMSNorm gain folded into its readers, a tied head untied, then the
  residual stream rotated — embeddings, q/k/v, gate/up and the head read ``x Q``; o_proj and down_proj write
  ``y Q``. ``rotation`` and ``seed`` define it.
- **R2** (offline, ``head_dim × head_dim``): the value heads (v_proj output, o_proj input), GQA-aware; one
  rotation shared by every layer or one per layer (SpinQuant's learned ``R2`` is per layer).
- **R4** (online ``"down_proj"``): a randomized Hadamard over the intermediate size on down_proj's input,
  ``down_proj`` becomes an :class:`~orthokit.rotation.online.OnlineRotatedLinear` holding ``W H``. Sizes without
  a Hadamard matrix use H2's block-diagonal fallback (e.g. 172 = 88 ⊕ 84), never zero padding.
- **R3** (online ``"kv"``): a randomized Hadamard over head_dim on q and k after RoPE, through the ``"orthokit"``
  attention implementation (:mod:`orthokit.rotation.attention`); skipped (and reported) for attention kernels other
  than sdpa/eager.
- A model *without* a head (``LlamaModel``) would return its last hidden state in the rotated basis; its final norm
  is wrapped by :class:`UnrotatedFinalNorm`, ``norm(x Qᵀ)``, one online ``hidden × hidden`` product per token, so
  ``last_hidden_state`` is unchanged (intermediate ``hidden_states`` stay rotated).

Seeds: R1 uses ``seed``; R2/R3/R4 use ``derive_seed(seed, "R2"|"R3"|"R4")`` (SHA-256, as the BERT rewriter).

All weight arithmetic is float64 and every new tensor is computed before the model is touched.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from orthokit.rotation.llama import rotate_llama
    >>> from orthokit.rotation.report import RotationReport
    >>> cfg = LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
    ...                   intermediate_size=48, vocab_size=50)
    >>> m = LlamaForCausalLM(cfg).eval()
    >>> ids = torch.arange(7)[None]
    >>> ref = m(ids).logits
    >>> rep = RotationReport("llama")
    >>> rotate_llama(m, "hadamard", seed=0, report=rep)
    >>> sorted(rep.rotations)
    ['R1', 'R2', 'R3', 'R4']
    >>> torch.allclose(m(ids).logits, ref, atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from orthokit.rotation._functional import LlamaDims, _base, llama_dims, llama_head, rotate_llama_params
from orthokit.rotation.attention import SUPPORTED_BASES, install_attention
from orthokit.rotation.base import Rotation
from orthokit.rotation.bert import derive_seed
from orthokit.rotation.fuse import untie_head
from orthokit.rotation.online import OnlineRotatedLinear, wrap_linear
from orthokit.rotation.registry import make_rotation

__all__ = ["LLAMA_SITES", "UnrotatedFinalNorm", "check_llama", "rotate_llama"]

#: online sites understood by :func:`rotate_llama`
LLAMA_SITES = ("down_proj", "kv")
_LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
_ATTN_CHILDREN = {"q_proj", "k_proj", "v_proj", "o_proj"}
_ATTN_ALLOWED = _ATTN_CHILDREN | {"rotary_emb"}
_MLP_CHILDREN = {"gate_proj", "up_proj", "down_proj"}
_MLP_ALLOWED = _MLP_CHILDREN | {"act_fn"}
_SCALE_KEYS = ("norm_scales", "ffn_scales", "ov_scales")


class UnrotatedFinalNorm(nn.Module):
    """``norm(x Qᵀ)``: the final norm of a headless rotated model, reading the rotated residual (see module doc)."""

    def __init__(self, norm: nn.Module, rotation: Rotation) -> None:
        super().__init__()
        self.norm = norm
        self.rotation = rotation

    def forward(self, x: Tensor) -> Tensor:
        """The original model's final norm output."""
        return self.norm(self.rotation.apply_T(x))


def _probe_rmsnorm(name: str, norm: nn.Module, hidden: int, cls: str) -> None:
    w = getattr(norm, "weight", None)
    if not isinstance(w, Tensor) or w.shape != (hidden,):
        raise ValueError(f"model: {cls}.{name} has no weight of shape ({hidden},); not an RMSNorm")
    if isinstance(getattr(norm, "bias", None), Tensor):
        raise ValueError(
            f"model: {cls}.{name} has a bias (LayerNorm); the Llama rewriter needs a plain RMSNorm"
        )
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)) or 0.0)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, hidden, generator=g, dtype=torch.float64) * 2).to(w.device)
    with torch.no_grad():
        got = norm(x.to(w.dtype)).to(torch.float64)
        want = w.detach().to(torch.float64) * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    tol = 1e-4 if w.dtype in (torch.float32, torch.float64) else 2e-2
    if not torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max())):
        raise ValueError(
            f"model: {cls}.{name} does not compute γ ⊙ x / rms(x) (e.g. Gemma's (1 + γ) gain); "
            "the Llama rewriter cannot fold it"
        )


def check_llama(model: nn.Module) -> LlamaDims:
    """Verify ``model`` has the Llama-family *structure* (not just the class name) and return its dims.

    Checks: ``embed_tokens`` (``nn.Embedding``), a non-empty ``layers`` list and a final ``norm``; each layer holds
    exactly ``self_attn``, ``mlp``, ``input_layernorm`` and ``post_attention_layernorm`` (no post-norms, as in
    Gemma2/OLMo2/GLM4); attention has separate ``q/k/v/o_proj`` linears and no q/k norms (Qwen3/OLMo2); the MLP
    has ``gate/up/down_proj``; every norm numerically computes ``γ ⊙ x / rms(x)`` (a probe; Gemma's ``(1 + γ)``
    fails it); projection shapes match the config; nothing is already online-rotated.

    Raises:
        TypeError: not an ``nn.Module``.
        ValueError: the first structural mismatch, naming the class and the module path.

    Example:
        >>> from transformers import LlamaConfig, LlamaModel
        >>> check_llama(LlamaModel(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                                    intermediate_size=48, vocab_size=50))).n_heads
        2
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    cls = type(model).__name__
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"model: {cls} has no transformers config")
    base = _base(model)
    if not isinstance(getattr(base, "embed_tokens", None), nn.Embedding):
        raise ValueError(f"model: {cls} has no embed_tokens embedding (not a Llama-family decoder)")
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"model: {cls} has no decoder layers list")
    if not isinstance(getattr(base, "norm", None), nn.Module):
        raise ValueError(f"model: {cls} has no final norm")
    try:
        dims = llama_dims(config)
    except AttributeError as exc:
        raise ValueError(f"model: {cls}'s config lacks a Llama field ({exc.name})") from None
    if isinstance(base.norm, UnrotatedFinalNorm):
        raise ValueError(f"model: {cls} is already rotated (final norm is an UnrotatedFinalNorm)")
    for i, layer in enumerate(layers):
        where = f"{cls} layers.{i}"
        children = {n for n, _ in layer.named_children()}
        missing, extra = _LAYER_CHILDREN - children, children - _LAYER_CHILDREN
        if missing or extra:
            raise ValueError(
                f"model: {where} is not a pre-norm Llama block (missing {sorted(missing)}, extra {sorted(extra)}; "
                "post-norms or other norms cannot be folded)"
            )
        for part, needed, allowed in (
            ("self_attn", _ATTN_CHILDREN, _ATTN_ALLOWED),
            ("mlp", _MLP_CHILDREN, _MLP_ALLOWED),
        ):
            mod = getattr(layer, part)
            kids = dict(mod.named_children())
            if set(kids) - allowed:
                raise ValueError(
                    f"model: {where}.{part} has unsupported modules {sorted(set(kids) - allowed)}"
                )
            for n in sorted(needed):
                if isinstance(kids.get(n), OnlineRotatedLinear):
                    raise ValueError(f"model: {where}.{part}.{n} is already online-rotated (rotate once)")
                if not isinstance(kids.get(n), nn.Linear):
                    raise ValueError(f"model: {where}.{part} has no nn.Linear {n}")
        att, mlp = layer.self_attn, layer.mlp
        expect = {
            "q_proj": (dims.n_heads * dims.head_dim, dims.hidden),
            "k_proj": (dims.n_kv_heads * dims.head_dim, dims.hidden),
            "v_proj": (dims.n_kv_heads * dims.head_dim, dims.hidden),
            "o_proj": (dims.hidden, dims.n_heads * dims.head_dim),
        }
        for n, shape in expect.items():
            if tuple(getattr(att, n).weight.shape) != shape:
                raise ValueError(
                    f"model: {where}.self_attn.{n} weight {tuple(getattr(att, n).weight.shape)} != {shape}"
                )
        for n, shape in (
            ("gate_proj", (dims.intermediate, dims.hidden)),
            ("up_proj", (dims.intermediate, dims.hidden)),
            ("down_proj", (dims.hidden, dims.intermediate)),
        ):
            if tuple(getattr(mlp, n).weight.shape) != shape:
                raise ValueError(
                    f"model: {where}.mlp.{n} weight {tuple(getattr(mlp, n).weight.shape)} != {shape}"
                )
        for n in ("input_layernorm", "post_attention_layernorm"):
            _probe_rmsnorm(f"layers.{i}.{n}", getattr(layer, n), dims.hidden, cls)
    _probe_rmsnorm("norm", base.norm, dims.hidden, cls)
    return dims


def _check_sites(online: Any) -> tuple[str, ...]:
    if online == "default":
        return LLAMA_SITES
    if online is None:
        return ()
    if isinstance(online, str):
        online = (online,)
    if not isinstance(online, (tuple, list, set, frozenset)) or not all(isinstance(s, str) for s in online):
        raise TypeError(f"online: expected 'default' or a tuple of site names, got {online!r}")
    bad = sorted(set(online) - set(LLAMA_SITES))
    if bad:
        raise ValueError(f"online: unknown Llama site(s) {bad}; choose from {LLAMA_SITES}")
    return tuple(s for s in LLAMA_SITES if s in online)


def _one_r2(r2: Any, head_dim: int, seed: int, name: str) -> Rotation:
    if not isinstance(r2, (Tensor, Rotation)):
        raise TypeError(
            f"{name}: expected a (head_dim, head_dim) Tensor or a Rotation, got {type(r2).__name__}"
        )
    try:
        return make_rotation(r2, head_dim, seed=seed)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc} (head_dim={head_dim})") from None


def _r2_rotation(r2: Any, dims: LlamaDims, seed: int) -> Rotation | list[Rotation] | None:
    """``None``, one Rotation shared by every layer, or one per layer (a 3-D tensor or a list/tuple)."""
    if r2 is False or r2 is None:
        return None
    hd, n = dims.head_dim, dims.n_layers
    if r2 is True:
        return make_rotation("hadamard", hd, seed=derive_seed(seed, "R2"))
    if isinstance(r2, Tensor) and r2.dim() == 3:
        if r2.shape != (n, hd, hd):
            raise ValueError(
                f"r2: per-layer tensor must have shape ({n}, {hd}, {hd}) (n_layers, head_dim, head_dim), "
                f"got {tuple(r2.shape)}"
            )
        r2 = list(r2.unbind(0))
    if isinstance(r2, (list, tuple)):
        if len(r2) != n:
            raise ValueError(f"r2: expected one rotation per layer ({n}), got {len(r2)}")
        return [_one_r2(r, hd, derive_seed(seed, f"R2.{i}"), f"r2[{i}]") for i, r in enumerate(r2)]
    if isinstance(r2, (Tensor, Rotation)):
        return _one_r2(r2, hd, derive_seed(seed, "R2"), "r2")
    raise TypeError(
        "r2: expected True, False, a (head_dim, head_dim) or (n_layers, head_dim, head_dim) Tensor, a Rotation "
        f"or a list of per-layer ones, got {type(r2).__name__}"
    )


def _check_scales(scales: Any) -> dict[str, Any]:
    if scales is None:
        return {}
    if not isinstance(scales, dict):
        raise TypeError(
            f"scales: expected None or a dict with keys {_SCALE_KEYS}, got {type(scales).__name__}"
        )
    bad = sorted(set(scales) - set(_SCALE_KEYS))
    if bad:
        raise ValueError(f"scales: unknown key(s) {bad}; expected {_SCALE_KEYS}")
    return {k: v for k, v in scales.items() if v is not None}


def _fused_params(model: nn.Module, dims: LlamaDims) -> dict[str, Tensor]:
    """float64 copies of the rotatable tensors with every gain folded (functional ``fuse_llama_norms``)."""
    sd = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items() if v.is_floating_point()}
    p = next(k for k in sd if k.endswith("embed_tokens.weight"))[: -len("embed_tokens.weight")]
    head = llama_head(model)
    if head is not None:
        key = f"{head[0]}.weight"
        sd[key] = sd[key].clone()  # untied copy (a tied state_dict shares storage)
    ones = torch.ones(dims.hidden, dtype=torch.float64)
    for i in range(dims.n_layers):
        lp = f"{p}layers.{i}."
        for norm, readers in (
            ("input_layernorm", [f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")]),
            ("post_attention_layernorm", ["mlp.gate_proj", "mlp.up_proj"]),
        ):
            gamma = sd[f"{lp}{norm}.weight"]
            for r in readers:
                sd[f"{lp}{r}.weight"] = sd[f"{lp}{r}.weight"] * gamma
            sd[f"{lp}{norm}.weight"] = ones.to(gamma.device)
    if head is not None:
        gamma = sd[f"{p}norm.weight"]
        sd[f"{head[0]}.weight"] = sd[f"{head[0]}.weight"] * gamma
        sd[f"{p}norm.weight"] = ones.to(gamma.device)
    return sd


def rotate_llama(
    model: nn.Module,
    rotation: str | Tensor | Callable[[int, int], Tensor] | Rotation = "hadamard",
    *,
    seed: int = 0,
    online: Any = "default",
    r2: Any = True,
    scales: dict[str, Any] | None = None,
    report: Any = None,
) -> None:
    """Rotate a Llama-family model in place (called by ``rotate_model``, which proves equivalence).

    Args:
        model: ``LlamaForCausalLM``/``LlamaModel``/``MistralForCausalLM``/``Qwen2ForCausalLM`` or any model passing
            :func:`check_llama`.
        rotation: R1: a registry name, an orthogonal ``(hidden, hidden)`` Tensor, a callable ``(n, seed) -> Tensor``
            or a Rotation.
        seed: R1's seed; R2/R3/R4 use ``derive_seed(seed, tag)``.
        online: ``"default"`` (= ``("down_proj", "kv")``), ``()`` or a subset of :data:`LLAMA_SITES`.
        r2: ``True`` (one randomized Hadamard over head_dim for every layer), ``False``, a ``(head_dim, head_dim)``
            Tensor or a Rotation (shared by every layer), or one per layer — SpinQuant learns a separate ``R2``
            per layer — as a ``(n_layers, head_dim, head_dim)`` Tensor or a list of ``n_layers`` Tensors/Rotations
            (each validated orthogonal; report keys ``"R2.layers.{i}"``).
        scales: OstQuant scalings ``{"norm_scales", "ffn_scales", "ov_scales"}`` for
            :func:`~orthokit.rotation._functional.rotate_llama_params`.
        report: a :class:`~orthokit.rotation.report.RotationReport` to fill, or ``None``.

    Raises:
        TypeError / ValueError: a bad argument or a non-Llama structure (named); the model is then untouched.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    dims = check_llama(model)
    sites = _check_sites(online)
    scale_kw = _check_scales(scales)
    dev = model.get_input_embeddings().weight.device
    r1 = make_rotation(rotation, dims.hidden, seed=seed)
    r2_rot = _r2_rotation(r2, dims, seed)
    rotations: dict[str, Rotation] = {"R1": r1}
    if isinstance(r2_rot, list):
        rotations.update({f"R2.layers.{i}": r for i, r in enumerate(r2_rot)})
    elif r2_rot is not None:
        rotations["R2"] = r2_rot
    skipped: dict[str, str] = {}
    if "down_proj" in sites:
        rotations["R4"] = make_rotation("hadamard", dims.intermediate, seed=derive_seed(seed, "R4"))
    else:
        skipped["R4"] = "online 'down_proj' not requested"
    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if "kv" in sites:
        if impl in (*SUPPORTED_BASES, "orthokit"):
            rotations["R3"] = make_rotation("hadamard", dims.head_dim, seed=derive_seed(seed, "R3"))
        else:
            skipped["R3"] = (
                f"kv: attention impl {impl} not supported (the 'orthokit' hook wraps sdpa/eager only)"
            )
    else:
        skipped["R3"] = "online 'kv' not requested"
    if r2_rot is None:
        skipped["R2"] = "r2=False"

    # compute every new tensor (float64) before touching the model
    fused = _fused_params(model, dims)
    if r2_rot is None:
        r2_mat = None
    elif isinstance(r2_rot, list):
        r2_mat = torch.stack([r.matrix(dtype=torch.float64, device=dev) for r in r2_rot])
    else:
        r2_mat = r2_rot.matrix(dtype=torch.float64, device=dev)
    new = rotate_llama_params(
        fused, model.config, r1.matrix(dtype=torch.float64, device=dev), r2_mat, **scale_kw
    )

    # commit
    base = _base(model)
    head = llama_head(model)
    untied = head is not None and untie_head(model, head[1], base.embed_tokens)
    live = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, t in new.items():
            if key in live:
                live[key].copy_(t)
    p = next(k for k in new if k.endswith("embed_tokens.weight"))[: -len("embed_tokens.weight")]
    online_done: list[str] = []
    if "R4" in rotations:
        for i, layer in enumerate(base.layers):
            wrap_linear(layer.mlp, "down_proj", rotations["R4"])
            online_done.append(f"{p}layers.{i}.mlp.down_proj [R4 online Hadamard in={dims.intermediate}]")
    if "R3" in rotations:
        install_attention(model)
        for i, layer in enumerate(base.layers):
            layer.self_attn._orthokit_qk_rotation = rotations["R3"]
            online_done.append(f"{p}layers.{i}.self_attn [R3 q/k after RoPE, head_dim={dims.head_dim}]")
    if head is None:
        base.norm = UnrotatedFinalNorm(base.norm, r1)
        online_done.append(f"{p}norm [R1ᵀ online: no head absorbs the final rotation]")

    if report is None:
        return
    s_norm, s_ffn, s_ov = (" + S" if scale_kw.get(k) else "" for k in _SCALE_KEYS)
    r2_tag = ", R2 out" if r2_rot is not None else ""
    r2_in = "R2 in, " if r2_rot is not None else ""
    offline = [f"{p}embed_tokens [R1]"]
    if untied:
        offline.append(f"{head[0]} [untied from embed_tokens]")  # type: ignore[index]
    for i in range(dims.n_layers):
        lp = f"{p}layers.{i}."
        offline += [
            f"{lp}self_attn.q_proj, k_proj [γ fused, R1 in{s_norm}]",
            f"{lp}self_attn.v_proj [γ fused, R1 in{s_norm}{r2_tag}{s_ov}]",
            f"{lp}self_attn.o_proj [{r2_in}R1ᵀ out{s_ov}]",
            f"{lp}mlp.gate_proj, up_proj [γ fused, R1 in{s_norm}{s_ffn}]",
            f"{lp}mlp.down_proj [R1ᵀ out{s_ffn}]",
        ]
    if head is not None:
        offline.append(f"{head[0]} [γ fused, R1 in{s_norm}]")
    report.offline.extend(offline)
    report.online.extend(online_done)
    report.skipped.update(skipped)
    report.rotations.update(rotations)
    if "R4" in rotations:
        report.notes.append(f"R4 over intermediate={dims.intermediate}: {rotations['R4']!r}")

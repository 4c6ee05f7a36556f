r"""``rotate_model``: rotate any supported transformers model, prove it still computes the same function, report.

Dispatch (:func:`rewriter_for`): the **Llama family** (pre-norm RMSNorm decoders: ``LlamaForCausalLM``,
``LlamaModel``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``, … — verified structurally by
:func:`orthokit.rotation.llama.check_llama`) goes to :func:`orthokit.rotation.llama.rotate_llama`; the **BERT
family** (post-LN encoders: ``BertModel``, ``BertForMaskedLM``, …) to :func:`orthokit.rotation.bert.rotate_bert`.

**The proof.** Unless ``check=False``, reference inputs run through the model *before* the rewrite and through the
rewritten model after, both in float32 and eval mode. The error is

.. math:: \varepsilon = \max_{o,\,b,\,t,\,j} |y'_{o,btj} - y_{o,btj}| \;/\; \max_{o,\,b,\,t,\,j} |y_{o,btj}|

over the compared outputs ``o`` (``logits`` when the model has them, else ``last_hidden_state`` and
``pooler_output``), restricted to the positions ``t`` whose ``attention_mask`` is 1. ``ε > rtol`` raises
``ValueError`` and leaves the input model untouched. Inputs: ``inputs`` if given (a LongTensor of ids or a dict
of model kwargs), else two seeded cases — random ids ``2 × 16`` and the same with the second row right-padded
after 8 tokens. Models in fp16/bf16 are rewritten in their dtype (float64 arithmetic, cast back) and the proof runs
the same rewrite on a float32 copy (rounding to half precision is not a rewrite error); the returned half model
itself must then hold only finite tensors and give finite outputs on the proof inputs (a cast-back overflow, e.g.
an fp16 weight pushed past 65504 by the rotation, raises and rolls back). Proof inputs are validated first: ids in
``[0, vocab)``, an ``attention_mask`` of the ids' shape with at least one 1.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from orthokit.rotation.rewrite import rotate_model
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                                  intermediate_size=48, vocab_size=50, tie_word_embeddings=True)).eval()
    >>> rotated, report = rotate_model(m, "haar", seed=3)
    >>> report.checked, report.max_rel_error < 1e-4, rotated is m
    (True, True, False)
    >>> ids = torch.arange(9)[None]
    >>> torch.allclose(rotated(ids).logits, m(ids).logits, atol=1e-4)
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from orthokit.rotation.base import Rotation
from orthokit.rotation.report import RotationReport

__all__ = ["rotate_model", "rewriter_for", "default_proof_inputs", "relative_error"]

_BERT_PATHS = ("attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense")


def _is_bert(model: nn.Module) -> bool:
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    for path in _BERT_PATHS:
        mod: Any = layers[0]
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if not isinstance(mod, nn.Module):
            return False
    return True


def _is_llama_like(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    base = inner if isinstance(inner, nn.Module) and hasattr(inner, "layers") else model
    return hasattr(base, "embed_tokens") and hasattr(base, "layers")


def rewriter_for(model: nn.Module) -> str:
    """``"llama"`` or ``"bert"``: which rewriter handles ``model`` (structure-checked), else ``ValueError``.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> rewriter_for(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                                   intermediate_size=64, vocab_size=50)))
        'bert'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if _is_bert(model):
        return "bert"
    if _is_llama_like(model):
        from orthokit.rotation.llama import check_llama

        check_llama(model)  # raises naming the structural mismatch (post-norms, q/k norms, (1+γ) gains, ...)
        return "llama"
    raise ValueError(
        f"model: {type(model).__name__} is not supported by rotate_model "
        "(supported: Llama-family pre-norm decoders — Llama, Mistral, Qwen2 — and BERT-family encoders)"
    )


def default_proof_inputs(
    model: nn.Module, *, batch: int = 2, length: int = 16, seed: int = 0
) -> list[dict[str, Tensor]]:
    """The seeded proof inputs: ``[{"input_ids"}, {"input_ids", "attention_mask"} (row 2 right-padded)]``."""
    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, length // 2 :] = 0
    return [{"input_ids": ids}, {"input_ids": ids.clone(), "attention_mask": mask}]


def _check_case(model: nn.Module, case: dict[str, Any]) -> None:
    """Token ids in ``[0, vocab)``; an attention mask of the ids' shape that selects at least one position."""
    ids, mask = case.get("input_ids"), case.get("attention_mask")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(ids, Tensor) and ids.numel() and vocab is not None:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= int(vocab):
            raise ValueError(f"inputs: token ids must lie in [0, {int(vocab)}), got [{lo}, {hi}]")
    if isinstance(mask, Tensor):
        if isinstance(ids, Tensor) and mask.shape != ids.shape:
            raise ValueError(
                f"inputs: attention_mask shape {tuple(mask.shape)} != input_ids shape {tuple(ids.shape)}"
            )
        if not bool(mask.bool().any()):
            raise ValueError("inputs: attention_mask is all zeros (no position to compare in the proof)")


def _proof_inputs(model: nn.Module, inputs: Any) -> list[dict[str, Any]]:
    if inputs is None:
        return default_proof_inputs(model)
    if isinstance(inputs, Tensor):
        if inputs.dtype not in (torch.int64, torch.int32) or inputs.dim() != 2:
            raise ValueError(
                f"inputs: expected a 2-D LongTensor of token ids, got {inputs.dtype} {tuple(inputs.shape)}"
            )
        cases = [{"input_ids": inputs}]
    elif isinstance(inputs, dict):
        cases = [dict(inputs)]
    else:
        raise TypeError(
            f"inputs: expected None, a LongTensor of ids or a dict of model kwargs, got {type(inputs).__name__}"
        )
    for case in cases:
        _check_case(model, case)
    return cases


def _outputs(model: nn.Module, cases: list[dict[str, Any]]) -> list[list[Tensor]]:
    dev = next(model.parameters()).device
    training = {m: m.training for m in model.modules()}
    model.eval()
    res = []
    try:
        with torch.no_grad():
            for case in cases:
                out = model(**{k: v.to(dev) if isinstance(v, Tensor) else v for k, v in case.items()})
                if getattr(out, "logits", None) is not None:
                    ys = [out.logits]
                else:
                    ys = [out.last_hidden_state]
                    if getattr(out, "pooler_output", None) is not None:
                        ys.append(out.pooler_output[:, None, :])
                mask = case.get("attention_mask")
                picked = []
                for y in ys:
                    y = y.detach().to(torch.float64).cpu()
                    if mask is not None and y.shape[1] == mask.shape[1]:
                        y = y[mask.bool().cpu()]
                    picked.append(y)
                res.append(picked)
    finally:
        for m, t in training.items():
            m.training = t
    return res


def relative_error(ref: list[list[Tensor]], got: list[list[Tensor]]) -> float:
    """``max|got − ref| / max|ref|`` over all cases and outputs (``inf`` on a non-finite output)."""
    num = max(
        float((g - r).abs().max())
        for rc, gc in zip(ref, got, strict=True)
        for r, g in zip(rc, gc, strict=True)
    )
    den = max(float(r.abs().max()) for rc in ref for r in rc)
    if num != num or den != den:
        return float("inf")
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


class _Snapshot:
    """Everything an in-place rewrite may change: module children/parameters/buffers, tensor data, orthokit
    attributes, and the config fields rewriters touch. ``restore()`` puts back the same objects and values."""

    _CFG = ("_attn_implementation", "tie_word_embeddings")

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.mods = [
            (
                m,
                dict(m._modules),
                dict(m._parameters),
                dict(m._buffers),
                {k: v for k, v in m.__dict__.items() if k.startswith("_orthokit")},
            )
            for m in model.modules()
        ]
        self.data: dict[int, tuple[Tensor, Tensor]] = {}
        for m in model.modules():
            for t in (*m._parameters.values(), *m._buffers.values()):
                if t is not None and id(t) not in self.data:
                    self.data[id(t)] = (t, t.detach().clone())
        cfg = getattr(model, "config", None)
        self.cfg = {k: getattr(cfg, k) for k in self._CFG if cfg is not None and hasattr(cfg, k)}
        tied = getattr(model, "all_tied_weights_keys", None)
        self.tied = copy.copy(tied)

    @torch.no_grad()
    def restore(self) -> None:
        for m, mods, params, bufs, attrs in self.mods:
            m._modules.clear()
            m._modules.update(mods)
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(bufs)
            for k in [k for k in m.__dict__ if k.startswith("_orthokit")]:
                delattr(m, k)
            m.__dict__.update(attrs)
        for t, saved in self.data.values():
            t.data.copy_(saved)
        cfg = getattr(self.model, "config", None)
        for k, v in self.cfg.items():
            setattr(cfg, k, v)
        if self.tied is not None:
            self.model.all_tied_weights_keys = self.tied


def _check_finite(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all()):
            raise ValueError(f"model: parameter {name} has non-finite values (NaN/inf); refusing to rotate")


def _check_returned(model: nn.Module, cases: list[dict[str, Any]], dtype: torch.dtype) -> None:
    """The model handed back (in its own dtype) must hold finite tensors and, on the proof inputs, give finite
    outputs: the float32 proof twin cannot see a cast-back overflow (an fp16 weight pushed past 65504)."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(
                    f"rotate_model: rotated {kind} {name} is not finite after casting back to {dtype} "
                    "(overflow); rotate a float32 copy instead"
                )
    for i, outs in enumerate(_outputs(model, cases)):
        if not all(bool(torch.isfinite(y).all()) for y in outs):
            raise ValueError(
                f"rotate_model: the rotated {dtype} model gives non-finite outputs on proof input {i} "
                "(overflow); rotate a float32 copy instead"
            )


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _rewrite(family: str, model: nn.Module, report: RotationReport, kw: dict[str, Any]) -> None:
    if family == "llama":
        from orthokit.rotation.llama import rotate_llama

        rotate_llama(
            model,
            kw["rotation"],
            seed=kw["seed"],
            online=kw["online"],
            r2=kw["r2"],
            scales=kw["scales"],
            report=report,
        )
    else:
        from orthokit.rotation.bert import rotate_bert

        rotate_bert(model, kw["rotation"], seed=kw["seed"], online=kw["online"], r2=kw["r2"], report=report)


def rotate_model(
    model: nn.Module,
    rotation: str | Tensor | Callable[[int, int], Tensor] | Rotation = "hadamard",
    *,
    seed: int = 0,
    online: Any = "default",
    r2: bool | Tensor | Rotation | list[Tensor | Rotation] = True,
    scales: dict[str, Any] | None = None,
    inputs: Tensor | dict[str, Any] | None = None,
    check: bool = True,
    rtol: float = 1e-4,
    inplace: bool = False,
) -> tuple[nn.Module, RotationReport]:
    """Rotate ``model`` (computational invariance) and prove the rotated model computes the same function.

    Args:
        model: a Llama-family decoder or a BERT-family encoder (see :func:`rewriter_for`).
        rotation: the main rotation: a :data:`~orthokit.rotation.registry.ROTATIONS` name (``"hadamard"``,
            ``"haar"``, ``"two_block_hadamard"``, ``"identity"``), an orthogonal Tensor, a callable
            ``(n, seed) -> Tensor`` or a :class:`~orthokit.rotation.base.Rotation`. Llama: R1 over hidden; BERT:
            the online input rotations (R1 is impossible on a post-LN encoder, reported as skipped).
        seed: base seed; per-site seeds are derived from it and recorded in the report's rotations.
        online: ``"default"`` — Llama ``("down_proj", "kv")``, BERT ``("linears", "kv")`` — or a tuple / ``()``.
        r2: per-head value/output rotation: ``True`` (randomized Hadamard over head_dim), ``False``, a
            ``(head_dim, head_dim)`` Tensor or a Rotation shared by every layer; Llama only: one per layer
            (SpinQuant) as a ``(n_layers, head_dim, head_dim)`` Tensor or a list of ``n_layers`` Tensors/Rotations.
        scales: Llama only, OstQuant scalings ``{"norm_scales", "ffn_scales", "ov_scales"}``.
        inputs: proof inputs (ids or a kwargs dict); default: seeded random ids with and without padding.
        check: run the proof (see the module docstring); ``False`` skips it (``report.checked`` is False).
        rtol: the largest accepted relative error.
        inplace: rewrite ``model`` itself (restored exactly if anything fails) instead of a deep copy.

    Returns:
        ``(rotated_model, report)``.

    Raises:
        TypeError / ValueError: a bad argument (e.g. ids outside the vocabulary, an all-zero attention mask), an
        unsupported model, NaN weights, a failed proof (``"rotate_model: equivalence check failed: …"``) or a
        non-finite half-precision result; the input model is unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    for name, flag in (("check", check), ("inplace", inplace)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name}: expected a bool, got {type(flag).__name__}")
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol > 0:
        raise ValueError(f"rtol: expected a positive number, got {rtol!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    family = rewriter_for(model)
    if family == "bert" and scales is not None:
        raise ValueError("scales: OstQuant scalings are only supported for the Llama family")
    if family == "bert" and (isinstance(r2, (list, tuple)) or (isinstance(r2, Tensor) and r2.dim() == 3)):
        raise ValueError("r2: per-layer R2 rotations are only supported for the Llama family")
    _check_finite(model)
    cases = _proof_inputs(model, inputs) if check else []
    kw = {"rotation": rotation, "seed": seed, "online": online, "r2": r2, "scales": scales}

    dtype = _model_dtype(model)
    proof_twin = copy.deepcopy(model).float() if check and dtype != torch.float32 else None
    ref = _outputs(proof_twin if proof_twin is not None else model, cases) if check else None

    target = model if inplace else copy.deepcopy(model)
    snap = _Snapshot(model) if inplace else None
    report = RotationReport(family=family)
    try:
        _rewrite(family, target, report, kw)
        if dtype != torch.float32:
            _check_returned(target, cases, dtype)
        if check:
            cand = target
            if proof_twin is not None:
                _rewrite(family, proof_twin, RotationReport(family=family), kw)
                cand = proof_twin
            err = relative_error(ref, _outputs(cand, cases))  # type: ignore[arg-type]
            report.max_rel_error = err
            report.checked = True
            if not err <= rtol:
                raise ValueError(
                    f"rotate_model: equivalence check failed: max relative error {err:.3g} > rtol {rtol:g} "
                    f"({family}, {type(model).__name__})"
                )
    except BaseException:
        if snap is not None:
            snap.restore()
        raise
    return target, report

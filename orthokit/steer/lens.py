"""Reading the residual stream in vocabulary space: the logit lens, the tuned lens, and how decodable a direction is.

* :func:`logit_lens` — ``head(final_norm(h))``: the model's own final norm and unembedding applied to an
  intermediate residual state (nostalgebraist 2020, "interpreting GPT: the logit lens"). At the last block's output
  it *is* the model's output (tested to 1e-5).
* :class:`TunedLens` — Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens"
  (arXiv 2303.08112; official code ``AlignmentResearch/tuned-lens``, ``tuned_lens/nn/lenses.py``): one affine
  translator per residual index ``ℓ < L``, ``TunedLens_ℓ(h) = LogitLens(h + A_ℓ h + b_ℓ)``, ``A_ℓ, b_ℓ`` initialised
  to zero (so the untrained lens is exactly the logit lens — the official code's residual parametrisation, which
  makes weight decay pull toward the identity), trained to minimise ``KL(p_final ‖ p_lens)`` with the model frozen.
  Defaults follow the official trainer: SGD with Nesterov momentum 0.9, lr 1.0, weight decay 1e-3, gradient-norm
  clip 1.0 (the official linear warm-up and token budget are not reproduced: a fixed step count is given).
* :func:`decodability` — how well a lens reads a *steering direction* as the target tokens: the tokens of
  ``lens(direction)`` (or of the mean logit shift ``lens(h + v) − lens(h)`` over context states) are scored by the
  AUROC of target vs non-target tokens (0.5 = chance, 1 = every target token outranks every other), the share of
  the top-k that are targets, and the mean rank of the target tokens. This is the "decodable" axis of Nadaf 2026,
  "Steerable but Not Decodable: Function Vectors Operate Beyond the Logit Lens" (arXiv 2604.02608), who find
  function-vector steering succeeding where the logit lens cannot decode the answer at any layer.

Residual indices: ``residual_states(model, ids)[ℓ]`` is the embedding output for ``ℓ = 0`` and the output of block
``ℓ − 1`` for ``ℓ ≥ 1`` (so ``ℓ = L`` is the last block's output, before the final norm). A steering hook on block
``i`` edits residual index ``i + 1``.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> from orthokit.steer.lens import TunedLens, logit_lens, residual_states
    >>> torch.manual_seed(0) and None
    >>> cfg = LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
    ...                   num_key_value_heads=2, intermediate_size=32, max_position_embeddings=32)
    >>> model = LlamaForCausalLM(cfg).eval()
    >>> ids = torch.randint(0, 40, (2, 8))
    >>> hs = residual_states(model, ids)                      # [L + 1, batch, time, d]
    >>> tuple(hs.shape)
    (3, 2, 8, 16)
    >>> bool((logit_lens(model, hs[-1]) - model(ids).logits).abs().max() < 1e-5)
    True
    >>> lens = TunedLens(model)                               # zero translators: equals the logit lens
    >>> bool(torch.equal(lens(hs[1], 1), logit_lens(model, hs[1])))
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._hooks import num_hidden_layers, residual_layers

__all__ = ["final_norm_and_head", "logit_lens", "residual_states", "TunedLens", "decodability"]

# (attribute path of the final norm) for the architectures transformers ships; the first that exists wins
_NORM_PATHS = (
    "model.norm",  # Llama, Mistral, Qwen2/3, Gemma 1-3, Phi-3, OLMo, ...
    "transformer.ln_f",  # GPT-2, GPT-J, GPT-Neo, BLOOM, CodeGen
    "gpt_neox.final_layer_norm",  # GPT-NeoX / Pythia
    "model.decoder.final_layer_norm",  # OPT
    "model.final_layernorm",  # Phi-1/2, Persimmon
    "transformer.norm_f",  # MPT
    "backbone.norm_f",  # Mamba
)


def _get_path(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def final_norm_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The final normalisation and the unembedding (LM head) of a transformers causal LM.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: if the model has no output embeddings or none of the known final-norm attributes
            (``model.norm``, ``transformer.ln_f``, ``gpt_neox.final_layer_norm``, ``model.decoder.final_layer_norm``,
            ``model.final_layernorm``, ``transformer.norm_f``, ``backbone.norm_f``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no output embeddings (LM head): pass a *ForCausalLM model"
        )
    for path in _NORM_PATHS:
        norm = _get_path(model, path)
        if isinstance(norm, nn.Module):
            return norm, head
    raise ValueError(
        f"no final norm found in {type(model).__name__} (looked for {', '.join(_NORM_PATHS)}); "
        "this architecture is not supported by the lens"
    )


def logit_lens(model: nn.Module, hidden_states: Tensor) -> Tensor:
    """Logits ``head(final_norm(h))`` of residual states ``h`` ``[..., d]`` (Gemma-2 style soft-capping applied).

    Raises:
        TypeError/ValueError: non-tensor or non-float input, wrong last dimension, NaN/inf.
    """
    norm, head = final_norm_and_head(model)
    d = _hidden_size(model)
    _check_states(hidden_states, "hidden_states", d)
    logits = head(norm(hidden_states))
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _hidden_size(model: nn.Module) -> int:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for key in ("hidden_size", "n_embd", "d_model"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    raise ValueError(f"cannot read the hidden size from {type(model).__name__}.config")


def _check_states(h: Any, name: str, d: int) -> Tensor:
    if not isinstance(h, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(h).__name__}")
    if not h.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {h.dtype}")
    if h.ndim < 1 or h.shape[-1] != d:
        raise ValueError(f"{name} must have shape [..., {d}] (the hidden size), got {tuple(h.shape)}")
    if not bool(torch.isfinite(h).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return h


def _check_ids(ids: Any, model: nn.Module) -> Tensor:
    if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.ndim != 2 or ids.numel() == 0:
        got = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"input_ids must be a non-empty int64 tensor [batch, time], got {got}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int) and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(
            f"input_ids must lie in [0, {vocab}), got range [{int(ids.min())}, {int(ids.max())}]"
        )
    return ids


@torch.no_grad()
def residual_states(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Residual stream at every depth, ``[L + 1, batch, time, d]``: the embedding output, then each block's output.

    Read with forward hooks on :func:`~orthokit.steer._hooks.residual_layers` (so the last entry is the raw block
    output, before the final norm — unlike ``output_hidden_states`` in architectures that normalise it).
    """
    _check_ids(input_ids, model)
    blocks = residual_layers(model)
    got: dict[int, Tensor] = {}

    def pre(_m: nn.Module, args: Any, kwargs: Any) -> None:
        h = args[0] if args else kwargs.get("hidden_states")
        got[0] = h.detach()

    def post(i: int) -> Any:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            got[i + 1] = (out if isinstance(out, Tensor) else out[0]).detach()

        return hook

    handles = [blocks[0].register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [b.register_forward_hook(post(i)) for i, b in enumerate(blocks)]
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if len(got) != len(blocks) + 1:
        raise ValueError(
            f"captured {len(got)} of {len(blocks) + 1} residual states: the blocks did not all run"
        )
    return torch.stack([got[i] for i in range(len(blocks) + 1)])


class TunedLens(nn.Module):
    """Per-layer affine translators ``h ↦ h + A_ℓ h + b_ℓ`` decoded by the model's final norm and head.

    Args:
        model: the (frozen) transformers causal LM; it is referenced, not registered as a submodule, so
            ``state_dict()`` holds only the translators.
        bias: learn ``b_ℓ`` (official default ``True``).

    ``forward(h, idx)`` takes residual states at index ``idx ∈ [0, L]`` (see the module docstring); ``idx = L`` has
    no translator (it is the logit lens, as in the official code).
    """

    def __init__(self, model: nn.Module, bias: bool = True) -> None:
        super().__init__()
        final_norm_and_head(model)  # fail early on an unsupported model
        self._model = (model,)  # a tuple hides it from nn.Module registration
        self.num_layers = num_hidden_layers(model)
        self.d = _hidden_size(model)
        p = next(model.parameters())
        self.translators = nn.ModuleList(
            nn.Linear(self.d, self.d, bias=bias, device=p.device, dtype=p.dtype)
            for _ in range(self.num_layers)
        )
        for t in self.translators:
            nn.init.zeros_(t.weight)
            if t.bias is not None:
                nn.init.zeros_(t.bias)

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    def _check_idx(self, idx: int) -> int:
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx <= self.num_layers:
            raise ValueError(f"idx must be an int in [0, {self.num_layers}] (a residual index), got {idx!r}")
        return idx

    def transform_hidden(self, h: Tensor, idx: int) -> Tensor:
        """``h + A_idx h + b_idx`` (identity at ``idx = L``)."""
        idx = self._check_idx(idx)
        _check_states(h, "h", self.d)
        return h if idx == self.num_layers else h + self.translators[idx](h)

    def forward(self, h: Tensor, idx: int) -> Tensor:
        """Lens logits of residual states ``h`` ``[..., d]`` taken at residual index ``idx``."""
        return logit_lens(self.model, self.transform_hidden(h, idx))

    def kl_to_final(self, input_ids: Tensor, *, tuned: bool = True) -> Tensor:
        """Mean ``KL(p_final ‖ p_lens)`` (nats per token) at every residual index ``0..L-1`` → ``[L]``;
        ``tuned=False`` scores the plain logit lens on the same tokens."""
        hs = residual_states(self.model, input_ids)
        with torch.no_grad():
            logp_final = F.log_softmax(logit_lens(self.model, hs[-1]).float(), -1)
            out = []
            for i in range(self.num_layers):
                logits = self(hs[i], i) if tuned else logit_lens(self.model, hs[i])
                out.append(_kl(logp_final, F.log_softmax(logits.float(), -1)))
        return torch.stack(out)

    def fit(
        self,
        batches: Iterable[Tensor],
        *,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        clip: float = 1.0,
    ) -> list[float]:
        """Train every translator on ``batches`` of ``input_ids`` (one optimizer step per batch) by minimising the
        sum over layers of ``KL(p_final ‖ p_lens)``; the model stays frozen. Returns the per-step loss
        (mean KL per layer, nats).

        A step whose loss or gradient is non-finite raises ``ValueError`` and restores the translators as they were
        before that step.
        """
        for name, v in (("lr", lr), ("clip", clip)):
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        for name, v in (("momentum", momentum), ("weight_decay", weight_decay)):
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a non-negative finite number, got {v!r}")
        opt = torch.optim.SGD(
            self.translators.parameters(),
            lr=lr,
            momentum=momentum,
            nesterov=momentum > 0,
            weight_decay=weight_decay,
        )
        history: list[float] = []
        frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in frozen:  # the model is read, never trained: no gradients land in it
            p.requires_grad_(False)
        try:
            for step, ids in enumerate(batches):
                history.append(self._step(ids, step, opt, clip))
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return history

    def _step(self, ids: Tensor, step: int, opt: torch.optim.Optimizer, clip: float) -> float:
        hs = residual_states(self.model, ids)
        with torch.no_grad():
            logp_final = F.log_softmax(logit_lens(self.model, hs[-1]).float(), -1)
        saved = {k: v.clone() for k, v in self.translators.state_dict().items()}
        loss = sum(_kl(logp_final, F.log_softmax(self(hs[i], i).float(), -1)) for i in range(self.num_layers))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        gnorm = torch.nn.utils.clip_grad_norm_(self.translators.parameters(), clip)
        if not (torch.isfinite(loss) and torch.isfinite(gnorm)):  # type: ignore[arg-type]
            self.translators.load_state_dict(saved)
            raise ValueError(
                f"tuned-lens step {step}: non-finite loss or gradient; translators left unchanged"
            )
        opt.step()
        if not all(bool(torch.isfinite(p).all()) for p in self.translators.parameters()):
            self.translators.load_state_dict(saved)
            raise ValueError(f"tuned-lens step {step}: the update made a translator non-finite; restored")
        return float(loss.detach()) / self.num_layers  # type: ignore[union-attr]


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """Mean over positions of ``KL(p ‖ q)`` from log-probabilities ``[..., V]``."""
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def _as_index_set(targets: Any, vocab: int) -> Tensor:
    t = torch.as_tensor(targets, dtype=torch.long).reshape(-1).unique()
    if t.numel() == 0:
        raise ValueError("target_tokens is empty")
    if int(t.min()) < 0 or int(t.max()) >= vocab:
        raise ValueError(
            f"target_tokens must lie in [0, {vocab}), got range [{int(t.min())}, {int(t.max())}]"
        )
    if t.numel() >= vocab:
        raise ValueError("target_tokens covers the whole vocabulary: nothing to rank against")
    return t


def decodability(
    direction: Tensor,
    model: nn.Module,
    layer: int,
    target_tokens: Sequence[int] | Tensor,
    *,
    lens: TunedLens | None = None,
    states: Tensor | None = None,
    k: int = 10,
) -> dict[str, float]:
    """How well a lens decodes ``direction`` (added at the output of block ``layer``) as ``target_tokens``.

    Without ``states`` the lens reads the direction itself: ``scores = lens(direction)`` (a norm makes the scale of
    ``direction`` irrelevant for the logit lens). With ``states`` ``[..., d]`` (residual states at that depth) it reads
    the mean logit shift the direction causes: ``mean_h [lens(h + direction) − lens(h)]``.

    Args:
        direction: ``[d]``.
        model: the transformers causal LM.
        layer: decoder block index (``0..L-1``); the states it edits have residual index ``layer + 1``.
        target_tokens: token ids the direction should promote (e.g. the characters typical of the target corpus).
        lens: a :class:`TunedLens` for ``model`` (default: the logit lens).
        k: size of the top-k list.

    Returns:
        ``auroc`` (probability a random target token outscores a random other token; 0.5 = chance), ``top_k_share``
        (fraction of the top-k tokens that are targets), ``top_k_chance`` (that fraction at random), and
        ``mean_target_rank`` (0 = best, normalised by the vocabulary size).
    """
    n = num_hidden_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise ValueError(f"layer must be a block index in [0, {n}), got {layer!r}")
    d = _hidden_size(model)
    _check_states(direction, "direction", d)
    if direction.ndim != 1:
        raise ValueError(f"direction must be 1-D [d], got shape {tuple(direction.shape)}")
    if lens is not None and (not isinstance(lens, TunedLens) or lens.model is not model):
        raise ValueError("lens must be a TunedLens built for this model")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")

    def read(h: Tensor) -> Tensor:
        return (lens(h, layer + 1) if lens is not None else logit_lens(model, h)).float()

    with torch.no_grad():
        p = next(model.parameters())
        v = direction.to(device=p.device, dtype=p.dtype)
        if states is None:
            scores = read(v)
        else:
            _check_states(states, "states", d)
            s = states.to(device=p.device, dtype=p.dtype).reshape(-1, d)
            scores = (read(s + v) - read(s)).mean(0)
    vocab = scores.shape[-1]
    tgt = _as_index_set(target_tokens, vocab)
    is_t = torch.zeros(vocab, dtype=torch.bool)
    is_t[tgt] = True
    # AUROC via ranks (ties counted half): Mann-Whitney U / (n_t n_o)
    ranks = _average_ranks(scores.double().cpu())
    n_t, n_o = int(is_t.sum()), vocab - int(is_t.sum())
    auroc = float((ranks[is_t].sum() - n_t * (n_t + 1) / 2) / (n_t * n_o))
    k = min(k, vocab)
    top = scores.cpu().topk(k).indices
    order = torch.argsort(scores.cpu(), descending=True)
    pos = torch.empty(vocab, dtype=torch.long)
    pos[order] = torch.arange(vocab)
    return {
        "auroc": auroc,
        "top_k_share": float(is_t[top].float().mean()),
        "top_k_chance": n_t / vocab,
        "mean_target_rank": float(pos[is_t].double().mean() / (vocab - 1)),
    }


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, ties given their average rank."""
    xs = torch.sort(x).values
    lo = torch.searchsorted(xs, x, right=False)
    hi = torch.searchsorted(xs, x, right=True)
    return (lo + 1 + hi).to(torch.float64) / 2

"""A character-level *transformers* decoder ("HF CharGPT") trained here on Tiny Shakespeare + WikiText-2, cached.

The steering benchmark (and the capacity / lens checks of other tools) need a real ``transformers`` causal LM whose
residual stream has been shaped by two distinguishable corpora, and which a CPU can train in a few minutes. This
module builds a :class:`~transformers.LlamaForCausalLM` (RMSNorm, rotary positions, SwiGLU MLP — the same code path as
any Llama checkpoint) over the characters of ``tinyshakespeare + wikitext2_valid``, trains it with AdamW on batches
that alternate between the two corpora (each split 90/10 train/validation on its own), reports the validation loss
per corpus, and caches it with ``save_pretrained`` under ``<out>/cache/hf_char_<hash>/`` (written to a temporary
folder, then renamed; reused only when the hash of the full configuration and vocabulary matches).

* :data:`FULL` — hidden 128, 4 layers, 4 heads, intermediate 344, context 128, 360 steps of 32 windows
  (≈ 3.5 min on one CPU thread).
* :data:`QUICK` — hidden 32, 2 layers, context 32, 40 steps of 8 windows (< 5 s; for tests and ``--quick``).
* :data:`DEMO` — hidden 48, 3 layers, context 64, 250 steps of 12 windows (6 s on a quiet core; the ``make demo``
  section).

Example:
    >>> import tempfile
    >>> from orthokit.bench.hf_char import QUICK, load_or_train
    >>> out = tempfile.mkdtemp()
    >>> lm = load_or_train(out, QUICK, log=lambda s: None)
    >>> type(lm.model).__name__, lm.model.config.num_hidden_layers
    ('LlamaForCausalLM', 2)
    >>> lm.decode(lm.encode("To be, or not")) == "To be, or not"
    True
    >>> again = load_or_train(out, QUICK, log=lambda s: None)   # second call: loaded from the cache
    >>> again.info["cached"], again.info["val_loss"] == lm.info["val_loss"]
    (True, True)
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from orthokit.bench.data import CharCorpus, char_corpus, get_batch, load_text

__all__ = [
    "HFCharConfig",
    "FULL",
    "QUICK",
    "DEMO",
    "CORPORA",
    "CharLM",
    "build_model",
    "corpora",
    "config_hash",
    "train_char_lm",
    "load_or_train",
    "evaluate_loss",
]

#: the two corpora the model is trained on (names accepted by :func:`orthokit.bench.data.load_text`)
CORPORA = ("tinyshakespeare", "wikitext2_valid")


@dataclass(frozen=True)
class HFCharConfig:
    """Architecture and training recipe of the char-level Llama (everything here enters the cache hash)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 344
    context: int = 128
    steps: int = 360
    batch: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 20
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_batches: int = 8
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        for k in ("hidden", "layers", "heads", "intermediate", "context", "steps", "batch", "eval_batches"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"HFCharConfig.{k} must be a positive int, got {v!r}")
        if self.hidden % self.heads:
            raise ValueError(f"HFCharConfig.hidden={self.hidden} must be divisible by heads={self.heads}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"HFCharConfig.lr must be a positive finite float, got {self.lr!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"HFCharConfig.val_fraction must be in (0, 1), got {self.val_fraction!r}")


FULL = HFCharConfig()
QUICK = HFCharConfig(hidden=32, layers=2, heads=2, intermediate=64, context=32, steps=40, batch=8, warmup=4)
DEMO = HFCharConfig(
    hidden=48, layers=3, heads=2, intermediate=128, context=64, steps=250, batch=12, warmup=10
)


@dataclass
class CharLM:
    """A trained char-level ``LlamaForCausalLM`` with its vocabulary and training record.

    ``info`` holds ``val_loss`` (mean next-char cross-entropy in nats per corpus on its held-out tail),
    ``train_s``, ``steps``, ``params``, ``hash`` and ``cached`` (True when loaded from disk).
    """

    model: Any
    chars: list[str]
    config: HFCharConfig
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def encode(self, s: str) -> Tensor:
        """Character ids of ``s`` (characters outside the vocabulary map to space)."""
        if not isinstance(s, str):
            raise TypeError(f"encode expects a str, got {type(s).__name__}")
        idx = {c: i for i, c in enumerate(self.chars)}
        unk = idx.get(" ", 0)
        return torch.tensor([idx.get(c, unk) for c in s], dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        """Text of a 1-D tensor of character ids."""
        return "".join(self.chars[int(i)] for i in ids.reshape(-1))

    def corpus(self, name: str) -> CharCorpus:
        """One training corpus in this model's vocabulary, split as during training."""
        if name not in CORPORA:
            raise ValueError(f"unknown corpus {name!r}; valid: {', '.join(CORPORA)}")
        return corpora(self.chars, self.config.val_fraction)[name]


@functools.lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    return tuple(sorted(set("".join(load_text(n) for n in CORPORA))))


def vocabulary() -> list[str]:
    """The shared character vocabulary of Tiny Shakespeare + WikiText-2 (valid), sorted (as ``char_corpus``)."""
    return list(_vocabulary())


@functools.lru_cache(maxsize=4)
def _corpora(chars: tuple[str, ...], val_fraction: float) -> dict[str, CharCorpus]:
    return {n: char_corpus(n, val_fraction=val_fraction, chars=list(chars)) for n in CORPORA}


def corpora(chars: list[str], val_fraction: float = 0.1) -> dict[str, CharCorpus]:
    """Each training corpus encoded with ``chars`` and split on its own (last ``val_fraction`` held out; cached
    per process — treat the tensors as read-only)."""
    return dict(_corpora(tuple(chars), val_fraction))


def build_model(cfg: HFCharConfig, vocab_size: int, seed: int | None = None) -> Any:
    """An untrained ``LlamaForCausalLM`` of the configured size (seeded initialization, eval mode off)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
    hf_cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        intermediate_size=cfg.intermediate,
        max_position_embeddings=cfg.context,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed if seed is None else seed)
        model = LlamaForCausalLM(hf_cfg)
    return model


def config_hash(cfg: HFCharConfig, chars: list[str]) -> str:
    """12-hex-digit hash of the recipe, the vocabulary and the transformers major.minor version."""
    import transformers

    blob = json.dumps(
        {"cfg": asdict(cfg), "chars": chars, "tf": ".".join(transformers.__version__.split(".")[:2])},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@torch.no_grad()
def evaluate_loss(model: Any, data: Tensor, cfg: HFCharConfig, seed: int = 1234) -> float:
    """Mean next-char cross-entropy (nats) of ``model`` on ``cfg.eval_batches`` fixed random windows of ``data``."""
    g = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = get_batch(data, cfg.batch, cfg.context, generator=g)
        logits = model(input_ids=x).logits
        losses.append(
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).item()
        )
    model.train(was)
    return float(sum(losses) / len(losses))


def train_char_lm(cfg: HFCharConfig = FULL, log: Callable[[str], None] = print) -> CharLM:
    """Train the char-level Llama on alternating Shakespeare / WikiText batches (AdamW, warmup + cosine decay)."""
    chars = vocabulary()
    data = corpora(chars, cfg.val_fraction)
    model = build_model(cfg, len(chars))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    g = torch.Generator().manual_seed(cfg.seed)
    names = list(CORPORA)
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        x, y = get_batch(data[names[step % 2]].train, cfg.batch, cfg.context, generator=g)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if step % max(1, cfg.steps // 6) == 0 or step == cfg.steps - 1:
            log(f"[hf_char] step {step:4d}/{cfg.steps} {names[step % 2]:16s} loss {loss.item():.3f}")
    train_s = time.perf_counter() - t0
    model.eval()
    val = {n: evaluate_loss(model, data[n].val, cfg) for n in names}
    info = {
        "val_loss": val,
        "train_s": train_s,
        "steps": cfg.steps,
        "params": sum(p.numel() for p in model.parameters()),
        "hash": config_hash(cfg, chars),
        "config": asdict(cfg),
        "cached": False,
    }
    log(f"[hf_char] trained in {train_s:.0f}s; val loss " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))
    return CharLM(model=model, chars=chars, config=cfg, info=info)


def _load(path: Path, cfg: HFCharConfig, chars: list[str]) -> CharLM | None:
    from transformers import LlamaForCausalLM

    try:
        meta = json.loads((path / "orthokit_char.json").read_text(encoding="utf-8"))
        if meta.get("chars") != chars or meta.get("info", {}).get("hash") != config_hash(cfg, chars):
            return None
        model = LlamaForCausalLM.from_pretrained(path)
    except (OSError, ValueError, KeyError):
        return None
    model.eval()
    info = dict(meta["info"], cached=True)
    return CharLM(model=model, chars=chars, config=cfg, info=info, path=path)


def load_or_train(
    out_dir: str | os.PathLike, cfg: HFCharConfig = FULL, log: Callable[[str], None] = print
) -> CharLM:
    """The trained model from ``<out_dir>/cache/hf_char_<hash>/`` if its hash matches, else trained and cached.

    The cache folder is written under a temporary name in the same parent and renamed into place, so an
    interrupted run never leaves a half-written model that a later run would load. Only that folder is written.
    """
    if not isinstance(cfg, HFCharConfig):
        raise TypeError(f"cfg must be an HFCharConfig, got {type(cfg).__name__}")
    chars = vocabulary()
    cache = Path(out_dir).expanduser().resolve() / "cache"
    path = cache / f"hf_char_{config_hash(cfg, chars)}"
    if path.is_dir():
        lm = _load(path, cfg, chars)
        if lm is not None:
            log(f"[hf_char] loaded cached model {path}")
            return lm
        log(f"[hf_char] cache {path} unreadable or stale; retraining")
    lm = train_char_lm(cfg, log)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{path.name}."))
    try:
        lm.model.save_pretrained(tmp)
        meta = {"chars": chars, "info": lm.info}
        (tmp / "orthokit_char.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if path.is_dir():  # a stale folder this module wrote (it carries our marker file): replace it
            if not (path / "orthokit_char.json").is_file():
                raise ValueError(f"cache folder {path} exists and was not written by orthokit; remove it")
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    lm.path = path
    return lm

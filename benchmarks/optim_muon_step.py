"""Optimizer-step time: orthokit Muon vs ``torch.optim.Muon`` (anchor, measured in the same run).

Parameter set: a GPT-shaped stack of ``--layers`` blocks with hidden size ``--d``: per block ``qkv (3d, d)``,
``proj (d, d)``, ``fc (4d, d)``, ``fc_out (d, 4d)`` (the matrices Muon is applied to; embeddings/head go to AdamW
and are excluded here). Gradients are fixed random tensors set once; each timed call is one ``opt.step()``.

Variants:
* ``torch.optim.Muon`` (anchor): Keller NS5 in bf16, one matrix at a time.
* ``torch.optim.Muon fp32 NS`` (alternative anchor, ``--anchor torch_fp32``): torch's optimizer with its private
  ``_zeropower_via_newtonschulz`` swapped for the identical iteration in fp32 (CPU bf16 matmuls are ~18× slower
  than fp32, so on CPU this is the meaningful framework-overhead comparison).
* ``orthokit keller bf16`` — same algorithm and dtype (``ns_method="keller", ns_dtype=torch.bfloat16``),
  batched (same-shape matrices in one polar call) and ``batched=False``.
* ``orthokit default`` — Polar Express, ``ns_dtype="auto"`` (fp32 on CPU, bf16 on GPU).
* ``orthokit keller fp32`` — NS5 in fp32 (the fair CPU comparison of framework overhead).

Timing: median of interleaved repeats (``orthokit.bench.report`` conventions); ratios are vs the anchor of the same
run. Usage::

    OMP_NUM_THREADS=1 python benchmarks/optim_muon_step.py --d 768 --layers 12 --repeats 3
    OMP_NUM_THREADS=1 python benchmarks/optim_muon_step.py --quick     # d=256, 12 layers

Writes ``benchmarks/results/optim_muon_step.{md,json}`` atomically.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from orthokit.bench.report import atomic_write_json, atomic_write_text, machine_info, md_table, results_dir
from orthokit.optim import Muon


def gpt_shapes(d: int, layers: int) -> list[tuple[int, int]]:
    """Matrix shapes of a GPT stack (nn.Linear layout, out × in)."""
    return [s for _ in range(layers) for s in ((3 * d, d), (d, d), (4 * d, d), (d, 4 * d))]


def _make(
    shapes: list[tuple[int, int]], factory: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt = factory(params)
    return opt


def _ns5_fp32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float):
    """torch.optim.Muon's Newton–Schulz iteration, unchanged except that it runs in fp32 instead of bf16."""
    a, b, c = ns_coefficients
    X = grad.float().clone()
    if grad.size(0) > grad.size(1):
        X = X.T
    X.div_(X.norm().clamp(min=eps))
    for _ in range(ns_steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    if grad.size(0) > grad.size(1):
        X = X.T
    return X


class _TorchMuonFP32(torch.optim.Muon):
    """torch.optim.Muon with the NS iteration in fp32 (module attribute swapped only during ``step``)."""

    def step(self, closure=None):  # type: ignore[override]
        import torch.optim._muon as tm

        orig = tm._zeropower_via_newtonschulz
        tm._zeropower_via_newtonschulz = _ns5_fp32
        try:
            return super().step(closure)
        finally:
            tm._zeropower_via_newtonschulz = orig


def run(d: int, layers: int, repeats: int, variants: list[str], anchor_kind: str = "torch") -> dict:
    shapes = gpt_shapes(d, layers)
    lr, wd = 0.02, 0.1
    factories: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
        "torch.optim.Muon (bf16 NS5)": lambda ps: torch.optim.Muon(ps, lr=lr, weight_decay=wd),
        "torch.optim.Muon fp32 NS5 (patched)": lambda ps: _TorchMuonFP32(ps, lr=lr, weight_decay=wd),
        "orthokit keller bf16 batched": lambda ps: Muon(
            ps, lr=lr, weight_decay=wd, ns_method="keller", ns_dtype=torch.bfloat16
        ),
        "orthokit keller bf16 per-param": lambda ps: Muon(
            ps, lr=lr, weight_decay=wd, ns_method="keller", ns_dtype=torch.bfloat16, batched=False
        ),
        "orthokit keller fp32 batched": lambda ps: Muon(
            ps, lr=lr, weight_decay=wd, ns_method="keller", ns_dtype=torch.float32
        ),
        "orthokit keller fp32 per-param": lambda ps: Muon(
            ps, lr=lr, weight_decay=wd, ns_method="keller", ns_dtype=torch.float32, batched=False
        ),
        "orthokit default (polar_express, auto dtype)": lambda ps: Muon(ps, lr=lr, weight_decay=wd),
    }
    chosen = {k: v for k, v in factories.items() if any(s in k for s in variants)} if variants else factories
    anchor = (
        "torch.optim.Muon (bf16 NS5)" if anchor_kind == "torch" else "torch.optim.Muon fp32 NS5 (patched)"
    )
    chosen = {anchor: factories[anchor], **chosen}
    opts = {k: _make(shapes, f) for k, f in chosen.items()}
    times: dict[str, list[float]] = {k: [] for k in opts}
    for o in opts.values():  # warm-up (state allocation)
        o.step()
    for _ in range(repeats):
        for k, o in opts.items():
            t0 = time.perf_counter()
            o.step()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "d": d,
        "layers": layers,
        "n_matrices": len(shapes),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "median_s": med,
        "all_s": times,
        "anchor": anchor,
        "ratio_vs_anchor": {k: med[k] / med[anchor] for k in med},
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="d=256 (CPU-friendly)")
    ap.add_argument(
        "--variants", nargs="*", default=[], help="substrings selecting variants (anchor always runs)"
    )
    ap.add_argument("--anchor", choices=["torch", "torch_fp32"], default="torch")
    ap.add_argument("--tag", default="", help="suffix for the result files")
    args = ap.parse_args(argv)
    d = 256 if args.quick else args.d
    res = run(d, args.layers, args.repeats, args.variants, args.anchor)
    rows = [
        [k, f"{1e3 * v:.1f}", f"{res['ratio_vs_anchor'][k]:.3f}"] for k, v in sorted(res["median_s"].items())
    ]
    md = (
        f"# Muon optimizer step: orthokit vs torch.optim.Muon\n\n"
        f"GPT-shaped parameter set: {args.layers} layers, d={d} ({res['n_matrices']} matrices), "
        f"{res['threads']} thread(s), median of {args.repeats} interleaved repeats.\n\n"
        + md_table(["variant", "step ms (median)", f"ratio vs {res['anchor']}"], rows)
        + "\n"
    )
    out = results_dir()
    stem = f"optim_muon_step{('_' + args.tag) if args.tag else ''}"
    atomic_write_json(out / f"{stem}.json", res)
    atomic_write_text(out / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()

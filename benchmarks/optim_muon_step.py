"""Optimizer-step time: orthokit Muon (measured dispatch) vs ``torch.optim.Muon``, interleaved rounds.

Parameter set: a GPT-shaped stack of ``--layers`` blocks with hidden size ``--d``: per block ``qkv (3d, d)``,
``proj (d, d)``, ``fc (4d, d)``, ``fc_out (d, 4d)`` (the matrices Muon is applied to). Gradients are fixed
random tensors set once; each timed call is one ``opt.step()``.

Rows (``--variants`` selects by substring; the anchor always runs):

* ``torch.optim.Muon`` — the anchor: Keller NS5 in bf16, one matrix at a time (what torch does on every device).
* ``torch.optim.Muon, NS5 in fp32`` — torch's optimizer with its private ``_zeropower_via_newtonschulz`` swapped
  for the identical iteration in fp32 (``--anchor torch_fp32`` makes it the anchor: on a CPU whose bf16 matmuls
  are slow, that is the meaningful framework comparison).
* ``orthokit Muon default`` — Polar Express, ``ns_dtype="auto"`` (measured dispatch; what a user gets).
* ``orthokit Muon default, transactional=False`` — the same without the failed-step snapshot (its cost).
* ``orthokit Muon default, ORTHOKIT_CPU_BF16=1 / =0`` — the override, i.e. the default's behaviour on a host
  where bf16 measures fast / slow (simulates the other CPU kind).
* ``orthokit Muon ns_dtype=float32`` / ``bfloat16`` — forced iteration dtype.
* ``orthokit Muon ns_method="keller"`` — Keller's coefficients (same algorithm as torch), auto dtype.
* ``orthokit Dion rank d/4``, ``torch.optim.AdamW``.

Timing: :func:`orthokit.bench.report.time_interleaved` (rotated order per round, one warm-up round which also
runs the dispatch probes), ratio = median of per-round ratios; the per-round ratio range is reported.
Usage::

    OMP_NUM_THREADS=2 python benchmarks/optim_muon_step.py --d 768 --layers 6 --rounds 5 \\
        --out benchmarks/results --stem optim_step

Writes ``<stem>.md`` and ``<stem>.json`` into ``--out`` (default ``./orthokit_results``) and prints the paths.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator

import torch

from orthokit.bench.report import (
    add_out_argument,
    announce,
    atomic_write_json,
    atomic_write_text,
    machine_info,
    md_table,
    results_dir,
    time_interleaved,
)
from orthokit.linalg._hw import cpu_info
from orthokit.linalg.dispatch import dispatch_report
from orthokit.optim import Dion, Muon


def gpt_shapes(d: int, layers: int) -> list[tuple[int, int]]:
    """Matrix shapes of a GPT stack (nn.Linear layout, out × in)."""
    return [s for _ in range(layers) for s in ((3 * d, d), (d, d), (4 * d, d), (d, 4 * d))]


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


@contextlib.contextmanager
def _env(key: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(key)
    if value is not None:
        os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _stepper(
    shapes: list[tuple[int, int]],
    factory: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    env: str | None = None,
) -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt = factory(params)

    def step() -> None:
        with _env("ORTHOKIT_CPU_BF16", env):
            opt.step()

    return step


def variants(d: int, lr: float = 0.02, wd: float = 0.1) -> dict[str, tuple[Callable, str | None]]:
    def nontx(ps):  # noqa: ANN001, ANN202
        o = Muon(ps, lr=lr, weight_decay=wd)
        o.transactional = False
        return o

    return {
        "torch.optim.Muon": (lambda ps: torch.optim.Muon(ps, lr=lr, weight_decay=wd), None),
        "torch.optim.Muon, NS5 in fp32 (patched)": (
            lambda ps: _TorchMuonFP32(ps, lr=lr, weight_decay=wd),
            None,
        ),
        "orthokit Muon default": (lambda ps: Muon(ps, lr=lr, weight_decay=wd), None),
        "orthokit Muon default, transactional=False": (nontx, None),
        "orthokit Muon default, ORTHOKIT_CPU_BF16=1 (bf16-fast host)": (
            lambda ps: Muon(ps, lr=lr, weight_decay=wd),
            "1",
        ),
        "orthokit Muon default, ORTHOKIT_CPU_BF16=0 (bf16-slow host)": (
            lambda ps: Muon(ps, lr=lr, weight_decay=wd),
            "0",
        ),
        "orthokit Muon ns_dtype=float32": (
            lambda ps: Muon(ps, lr=lr, weight_decay=wd, ns_dtype=torch.float32),
            None,
        ),
        "orthokit Muon ns_dtype=bfloat16": (
            lambda ps: Muon(ps, lr=lr, weight_decay=wd, ns_dtype=torch.bfloat16),
            None,
        ),
        "orthokit Muon ns_method=keller": (
            lambda ps: Muon(ps, lr=lr, weight_decay=wd, ns_method="keller"),
            None,
        ),
        "orthokit Dion rank d/4": (lambda ps: Dion(ps, lr=0.01, weight_decay=wd, rank=d // 4), None),
        "torch.optim.AdamW": (lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=wd), None),
    }


def run(d: int, layers: int, rounds: int, select: list[str], anchor: str, exclude: list[str] = ()) -> dict:
    shapes = gpt_shapes(d, layers)
    table = variants(d)
    chosen = [
        k
        for k in table
        if k == anchor or ((not select or any(s in k for s in select)) and not any(s in k for s in exclude))
    ]
    fns = {k: _stepper(shapes, table[k][0], table[k][1]) for k in chosen}
    times: dict[str, list[float]] = {}
    med, ratio = time_interleaved(fns, rounds=rounds, warmup=1, anchor=anchor, times_out=times)
    spread = {
        k: (min(t / a for t, a in zip(v, times[anchor])), max(t / a for t, a in zip(v, times[anchor])))
        for k, v in times.items()
    }
    return {
        "d": d,
        "layers": layers,
        "n_matrices": len(shapes),
        "rounds": rounds,
        "anchor": anchor,
        "median_s": med,
        "ratio_vs_anchor": ratio,
        "ratio_range": spread,
        "all_s": times,
        "cpu": cpu_info(),
        "machine": machine_info(),
        "dispatch": dispatch_report(),
    }


def to_markdown(res: dict) -> str:
    cpu = res["cpu"]
    rows = [
        [
            k,
            f"{res['median_s'][k]:.3f}",
            f"{res['ratio_vs_anchor'][k]:.3f}",
            f"{res['ratio_range'][k][0]:.2f}–{res['ratio_range'][k][1]:.2f}",
        ]
        for k in res["median_s"]
    ]
    return (
        f"### {res['layers']} layer(s), d={res['d']} ({res['n_matrices']} matrices), anchor: {res['anchor']}\n\n"
        f"CPU: {cpu['model']}; flags: {' '.join(cpu['flags']) or '–'}; torch {res['machine']['torch']}, "
        f"{cpu['torch_threads']} thread(s); {res['rounds']} interleaved rounds after one warm-up round.\n\n"
        + md_table(
            ["variant", "s/step (median)", "× anchor (median of per-round ratios)", "per-round range"], rows
        )
        + "\n\nDispatch decisions in this run (`orthokit.linalg.dispatch.dispatch_report()`):\n\n"
        + res["dispatch"]
        + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument(
        "--variants", nargs="*", default=[], help="substrings selecting rows (anchor always runs)"
    )
    ap.add_argument("--exclude", nargs="*", default=[], help="substrings of rows to leave out")
    ap.add_argument("--anchor", choices=["torch", "torch_fp32"], default="torch")
    add_out_argument(ap)
    ap.add_argument(
        "--stem", default="optim_step", help="output file stem in --out (.md, and .json with the raw data)"
    )
    args = ap.parse_args(argv)
    cpu = cpu_info()
    print(
        f"CPU: {cpu['model']} | flags: {' '.join(cpu['flags'])} | threads {cpu['torch_threads']}", flush=True
    )
    anchor = "torch.optim.Muon" if args.anchor == "torch" else "torch.optim.Muon, NS5 in fp32 (patched)"
    res = run(args.d, args.layers, args.rounds, args.variants, anchor, args.exclude)
    md = to_markdown(res)
    print(md)
    out = results_dir(args.out) / f"{args.stem}.md"
    atomic_write_text(out, md)
    atomic_write_json(out.with_suffix(".json"), res)
    announce([out, out.with_suffix(".json")], "optim_muon_step")


if __name__ == "__main__":
    main()

"""Cost of orthokit.projection relative to the plain optimizer step (anchor measured in the same run).

Cases (real data from ../shared/data):
* GPM protocol MLP 784-100-100-10 (no bias), batch 10, SGD lr 0.01, memory from 300 MNIST images (ε = [0.95, 0.99,
  0.99]); variants: plain SGD (anchor), GPM reference (``grad − grad @ P`` with the dense projector precomputed,
  as in the GPM code), ``Projected(where="gradient")``, ``Projected(where="update")``.
* CharGPT d=128, 2 layers on Tiny Shakespeare, batch 8×64, AdamW (wd 0.1), every Linear protected (ε = 0.97);
  variants: plain AdamW (anchor), ``Projected(where="update")``, ``ProjectionCallback``-equivalent cost is the same.

Timing: median of interleaved repeats of a full training step (zero_grad + forward + backward + step).
Usage: ``OMP_NUM_THREADS=1 python benchmarks/projection_overhead.py [--quick] [--out DIR]``; writes
``projection_overhead{,_quick}.{md,json}`` atomically into ``--out`` (default ``./orthokit_results``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from orthokit.bench.data import char_corpus, get_batch, load_mnist
from orthokit.bench.models import MLP, CharGPT
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
from orthokit.projection import Projected, SubspaceMemory


def _interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def mlp_case(repeats: int) -> tuple[dict[str, float], str]:
    (xtr, ytr), _ = load_mnist(flatten=True, limit=2000)
    torch.manual_seed(0)
    base = MLP([784, 100, 100, 10])
    mem_model = MLP([784, 100, 100, 10])
    mem_model.load_state_dict(base.state_dict())
    mem = SubspaceMemory(mem_model)
    mem.collect_activations(mem_model, [xtr[:300]], threshold=[0.95, 0.99, 0.99])
    dims = " / ".join(f"{s.k}/{s.n}" for s in mem.summary())
    g = torch.Generator().manual_seed(0)

    def make(kind: str) -> Callable[[], None]:
        model = MLP([784, 100, 100, 10])
        model.load_state_dict(base.state_dict())
        m = SubspaceMemory(model)
        m.load_state_dict(mem.state_dict())
        inner = torch.optim.SGD(model.parameters(), lr=0.01)
        if kind == "plain" or kind == "gpm_reference":
            opt: torch.optim.Optimizer = inner
        else:
            opt = Projected(inner, m, where="update" if kind == "projected_update" else "gradient")
        dense = [m.basis(n) @ m.basis(n).T for n in m.layer_names]

        def step() -> None:
            idx = torch.randint(0, xtr.shape[0], (10,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            if kind == "gpm_reference":
                for p, proj in zip(model.parameters(), dense):
                    p.grad -= p.grad @ proj
            opt.step()

        return step

    kinds = ["plain", "gpm_reference", "projected_gradient", "projected_update"]
    return _interleaved({k: make(k) for k in kinds}, repeats), dims


def gpt_case(repeats: int) -> tuple[dict[str, float], str]:
    corpus = char_corpus("tinyshakespeare")
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    base = CharGPT(corpus.vocab_size, d_model=128, n_layer=2, n_head=4, block_size=64)
    mem = SubspaceMemory(base, layers=nn.Linear)
    batches = [get_batch(corpus.train, 8, 64, g)[0] for _ in range(4)]
    mem.collect_activations(base, batches, threshold=0.97, forward=lambda m, b: m(b))
    total_k = sum(s.k for s in mem.summary())
    total_n = sum(s.n for s in mem.summary())

    def make(kind: str) -> Callable[[], None]:
        model = CharGPT(corpus.vocab_size, d_model=128, n_layer=2, n_head=4, block_size=64)
        model.load_state_dict(base.state_dict())
        m = SubspaceMemory(model, layers=nn.Linear)
        m.load_state_dict(mem.state_dict())
        inner = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        opt = inner if kind == "plain" else Projected(inner, m)

        def step() -> None:
            x, y = get_batch(corpus.train, 8, 64, g)
            opt.zero_grad()
            model(x, y)[1].backward()
            opt.step()

        return step

    return _interleaved(
        {k: make(k) for k in ("plain", "projected_update")}, repeats
    ), f"{total_k}/{total_n} over {len(mem.layer_names)} Linear layers"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timed steps")
    add_out_argument(ap)
    args = ap.parse_args(argv)
    quick = args.quick
    torch.set_num_threads(1)
    mlp, mlp_dims = mlp_case(30 if quick else 200)
    gpt, gpt_dims = gpt_case(5 if quick else 30)
    rows = [
        ["MLP 784-100-100-10, SGD, batch 10", k, f"{v * 1e3:.3f}", f"{v / mlp['plain']:.2f}x"]
        for k, v in mlp.items()
    ]
    rows += [
        ["CharGPT d128 L2, AdamW, 8x64", k, f"{v * 1e3:.2f}", f"{v / gpt['plain']:.2f}x"]
        for k, v in gpt.items()
    ]
    text = "\n".join(
        [
            "# Projection overhead (median ms per full training step, ratio to the plain optimizer in the same run)",
            "",
            md_table(["case", "variant", "ms/step", "vs plain"], rows),
            "",
            f"MLP memory k/n per layer: {mlp_dims}; CharGPT memory: {gpt_dims}.",
            f"Machine: {machine_line()}",
            "",
        ]
    )
    out = results_dir(args.out)
    stem = result_stem("projection_overhead", quick)
    atomic_write_text(out / f"{stem}.md", text)
    atomic_write_json(
        out / f"{stem}.json",
        {"mlp": mlp, "gpt": gpt, "mlp_dims": mlp_dims, "gpt_dims": gpt_dims, "machine": machine_info()},
    )
    print(text)
    announce([out / f"{stem}.md", out / f"{stem}.json"], "projection_overhead")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

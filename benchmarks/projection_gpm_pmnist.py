"""GPM core validation on permuted MNIST (the GPM protocol), through the public orthokit.projection API.

Protocol (reference notes §10/§11; GPM repo): inputs normalised with the MNIST mean/std as in GPM's loader, 10 tasks, every task a fixed pixel permutation (first task permuted
too; permutations from ``torch.Generator`` seed 0), MLP 784-100-100-10 without bias, model seed 1, SGD lr 0.01,
batch 10, first 54,000 training images per task, evaluation on the 10,000 test images under each permutation.
GPM: ε = [0.95, 0.99, 0.99], 300 random training samples per task for the representation, a fresh SGD per task;
``--criterion minimal`` (default: the paper's energy criterion, what ``threshold`` means in orthokit) or
``--criterion gpm_code`` (the reference code's first-task count, one direction fewer).
Methods: ``finetune`` (plain SGD), ``gpm`` (``where="gradient"`` = reference code path, ``gpm_update`` = the
default update projection; identical for SGD) and ``sgp`` (SGP with α = 10, same thresholds and samples).

Metrics: ACC = mean_j R[T, j]; BWT = mean_{j<T} (R[T, j] − R[j, j]) (GPM/GEM definition); learning accuracy =
mean_j R[j, j].

Usage: ``OMP_NUM_THREADS=1 python benchmarks/projection_gpm_pmnist.py [--epochs 1] [--tasks 10]
[--train 54000] [--methods finetune,gpm] [--out DIR] [--stem NAME]``; writes ``<stem>.{md,json}`` into ``--out``
(default ``./orthokit_results``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

from orthokit.bench.data import load_mnist
from orthokit.bench.models import MLP
from orthokit.bench.report import (
    add_out_argument,
    announce,
    atomic_write_json,
    atomic_write_text,
    machine_info,
    machine_line,
    md_table,
    results_dir,
)
from orthokit.projection import GPM, SGP


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean()) * 100.0


def run(method: str, args: argparse.Namespace) -> dict:
    (xtr, ytr), (xte, yte) = load_mnist(flatten=True)
    # GPM's loader normalises with the MNIST mean/std (transforms.Normalize((0.1307,), (0.3081,)))
    xtr, xte = (xtr[: args.train] - 0.1307) / 0.3081, (xte - 0.1307) / 0.3081
    ytr = ytr[: args.train]
    g = torch.Generator().manual_seed(0)
    perms = [torch.randperm(784, generator=g) for _ in range(args.tasks)]
    torch.manual_seed(1)
    model = MLP([784, 100, 100, 10])
    if method == "finetune":
        gpm = None
    elif method == "sgp":
        gpm = SGP(
            model, threshold=[0.95, 0.99, 0.99], scale_coff=10.0, max_samples=300, criterion=args.criterion
        )
    else:
        gpm = GPM(model, threshold=[0.95, 0.99, 0.99], max_samples=300, criterion=args.criterion)
    acc = [[0.0] * args.tasks for _ in range(args.tasks)]
    data_gen = torch.Generator().manual_seed(2)
    t0 = time.perf_counter()
    for t, perm in enumerate(perms):
        inner = torch.optim.SGD(model.parameters(), lr=0.01)
        opt = (
            inner
            if gpm is None
            else gpm.wrap(inner, where="update" if method == "gpm_update" else "gradient")
        )
        x_t = xtr[:, perm]
        for _ in range(args.epochs):
            order = torch.randperm(x_t.shape[0], generator=data_gen)
            for idx in order.split(10):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x_t[idx]), ytr[idx]).backward()
                opt.step()
        if gpm is not None:
            sample = torch.randperm(x_t.shape[0], generator=data_gen)[:300]
            gpm.after_task([x_t[sample]])
        for j in range(t + 1):
            acc[t][j] = _accuracy(model, xte[:, perms[j]], yte)
        print(f"[{method}] task {t}: " + " ".join(f"{a:.1f}" for a in acc[t][: t + 1]), flush=True)
    wall = time.perf_counter() - t0
    T = args.tasks
    res = {
        "method": method,
        "acc_matrix": acc,
        "ACC": sum(acc[T - 1]) / T,
        "BWT": sum(acc[T - 1][j] - acc[j][j] for j in range(T - 1)) / max(T - 1, 1),
        "learning_acc": sum(acc[j][j] for j in range(T)) / T,
        "wall_s": wall,
        "basis": [f"{s.k}/{s.n}" for s in gpm.summary()] if gpm is not None else [],
    }
    return res


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--train", type=int, default=54000)
    p.add_argument("--methods", default="finetune,gpm")
    p.add_argument(
        "--criterion",
        default="minimal",
        choices=["minimal", "gpm_code"],
        help="energy criterion: 'minimal' (library default, the paper's) or 'gpm_code' (reference code's first task)",
    )
    add_out_argument(p)
    p.add_argument("--stem", default="projection_gpm_pmnist", help="results file stem in --out")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = [run(m, args) for m in args.methods.split(",")]
    rows = [
        [
            r["method"],
            f"{r['ACC']:.2f}",
            f"{r['BWT']:.2f}",
            f"{r['learning_acc']:.2f}",
            " / ".join(r["basis"]) or "-",
            f"{r['wall_s']:.0f}",
        ]
        for r in results
    ]
    text = "\n".join(
        [
            f"# pMNIST-{args.tasks}, MLP 784-100-100-10, SGD lr 0.01, batch 10, {args.epochs} epoch(s), "
            f"{args.train} train images/task, criterion={args.criterion!r}",
            "",
            md_table(["method", "ACC %", "BWT %", "learning acc %", "basis k/n", "wall s (1 thread)"], rows),
            "",
            f"Machine: {machine_line()}",
            "",
        ]
    )
    out = results_dir(args.out)
    atomic_write_text(out / f"{args.stem}.md", text)
    atomic_write_json(
        out / f"{args.stem}.json",
        {"args": vars(args), "results": results, "machine": machine_info()},
    )
    print(text)
    announce([out / f"{args.stem}.md", out / f"{args.stem}.json"], "projection_gpm_pmnist")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Re-measure the continual-learning rows whose defaults changed (issue 15: HLOP, FOT), pMNIST, through the
harness in ``orthokit/bench/continual.py`` (its ``run_sequence``, streams, optimiser and metrics, unedited).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/results/continual_defaults.py METHOD [--n-train 10000] [--seed 0]

METHOD ∈ {hlop_ref, hlop_old, fot_ref, fot_old}; writes ``/tmp/continual_defaults/<METHOD>_s<seed>.json``.
The harness's own HLOP row is run through its CLI (``orthokit bench continual --only pmnist --methods hlop``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orthokit.bench.continual import MethodSpec, _ProjectionAdapter, _sgd, pmnist_stream, run_sequence

LAYERS = ["layers.0", "layers.1", "layers.2"]
HLOP_K = [60, 12, 10]  # the harness's HLOP row


class _Adapter(_ProjectionAdapter):
    """The harness's projection adapter with explicit constructor options."""

    def __init__(self, kind: str, samples: int, split: int | None = None, **opts: Any) -> None:
        super().__init__(kind, LAYERS, (0.95, 0.99, 0.99), samples)
        self.opts, self.split = opts, split

    def end_task(self, model: nn.Module, task: int, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.split is None:
            return super().end_task(model, task, x, y)
        self._ensure(model)  # the harness's HLOP row: 3 passes over 100-sample batches of the 1000-sample subset
        self.method.after_task(list(x[: self.samples].split(self.split)))

    def _ensure(self, model: nn.Module) -> None:
        if self.method is None:
            from orthokit.projection import PROJECTIONS

            self.method = PROJECTIONS.get(self.kind)(model, self.layers, **self.opts)


SPECS = {
    # HLOP's reference: online Oja learning during each task's training, EMA momentum, HLOP's pMNIST lrs
    "hlop_ref": MethodSpec(
        "HLOP (SGD), reference defaults",
        lambda s, seed: _Adapter("hlop", 1000, k_new=HLOP_K, lr=[0.001, 0.01, 0.01]),
        _sgd(),
        f"online Oja during training, EMA momentum 0.9, lr [0.001, 0.01, 0.01] (HLOP's pMNIST), k {HLOP_K}",
    ),
    # orthokit's earlier HLOP variant, via options (as the harness's row ran it before)
    "hlop_old": MethodSpec(
        "HLOP (SGD), orthokit's earlier variant",
        lambda s, seed: _Adapter(
            "hlop",
            1000,
            split=100,
            k_new=HLOP_K,
            lr=0.05,
            momentum_form="heavy_ball",
            init="orthogonal_to_old",
            normalize=True,
            schedule="after_task",
            passes=3,
        ),
        _sgd(),
        "3 passes over the 1000-sample end-of-task subset, heavy-ball momentum, normalized inputs, lr 0.05",
    ),
    "fot_ref": MethodSpec(
        "FOT (SGD), reference defaults",
        lambda s, seed: _Adapter("fot", 300, threshold=0.95),
        _sgd(),
        "ε 0.95, uniform sketch, mean norm ratio (FOT's rule), 300 samples, one client",
    ),
    "fot_old": MethodSpec(
        "FOT (SGD), orthokit's earlier variant",
        lambda s, seed: _Adapter("fot", 300, threshold=0.95, sketch=None, ratio_rule="energy"),
        _sgd(),
        "ε 0.95, exact Gram, pooled energy ratio, 300 samples, one client",
    ),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("method", choices=sorted(SPECS))
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/continual_defaults")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stream = pmnist_stream(n_tasks=10, n_train=a.n_train)
    t0 = time.perf_counter()
    res = run_sequence(stream, SPECS[a.method], a.method, a.seed, log=lambda s: print(s, flush=True))
    d = {**res.__dict__, "label": SPECS[a.method].label, "n_train": a.n_train, "wall": time.perf_counter() - t0}
    (out / f"{a.method}_s{a.seed}.json").write_text(json.dumps(d, indent=1))
    print(json.dumps(res.metrics), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

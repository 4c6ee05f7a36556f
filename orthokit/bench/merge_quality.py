"""Merge QUALITY benchmark: real multi-task fine-tunes on CPU, merged by every method, λ chosen on validation.

Two testbeds, each run for several seeds (every seed retrains the base model and all experts):

* **Vision (MNIST family).** A 3-layer GELU MLP backbone (784→256→256→256) is pre-trained on MNIST, then
  fine-tuned separately on five tasks, each with its own linear head: MNIST rotated 90°, MNIST under a fixed
  pixel permutation, intensity-inverted MNIST restricted to digits 0–4, horizontally flipped MNIST restricted to
  digits 5–9, and scikit-learn's 8×8 ``digits`` upscaled to 20×20 and centred in 28×28. Experts = linear probe
  then full fine-tune (the heads are frozen afterwards and only the backbone is merged, as with CLIP's zero-shot
  heads in FusionBench's TA8). A second set of experts is trained with rank-8 LoRA adapters on the three backbone
  matrices (same probe heads) for the LoRA track, and a third with OFT adapters (block-diagonal Cayley rotations
  of each layer's input, block 16) for the OFT track, where ``orthomerge_oft`` merges the rotations on SO(16).
* **Language (char-level).** A small :class:`~orthokit.bench.models.CharGPT` pre-trained on a Tiny Shakespeare +
  WikiText-2 mixture and fine-tuned separately on each corpus; every tensor (embeddings, attention, MLP, norms,
  LM head) is merged.

Metrics: per-task test accuracy (loss for the LM) and **normalized accuracy** = mean_t acc_t(merged) /
acc_t(expert_t) (FusionBench / TSV / DC-Merge convention; for the LM ``loss_t(expert_t) / loss_t(merged)``).
Each method's scale λ (and OrthoMerge's rotation/residual scales) is chosen on a validation split by mean
normalized score, then reported on test; methods are compared **paired by seed** against task arithmetic.
Data-free diagnostics of the task vectors (cosine, subspace overlap, sign conflicts) and the weight
disentanglement error of task arithmetic are reported alongside.

Reproduce: ``OMP_NUM_THREADS=1 python benchmarks/merge_quality.py [--out DIR]`` (3 seeds) or ``--quick`` (1 seed, shorter
training). Results: ``merge_quality{,_quick}.{md,json,png}`` in ``--out`` (default ``./orthokit_results``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from orthokit.bench.data import char_corpus, get_batch, load_mnist
from orthokit.bench.models import CharGPT
from orthokit.bench.report import atomic_savefig, atomic_write_json, atomic_write_text, machine_info, md_table
from orthokit.merge.diagnostics import (
    pairwise_cosine,
    sign_conflict_rate,
    subspace_overlap,
    task_vectors,
    weight_disentanglement_error,
)
from orthokit.merge.registry import MERGE_METHODS, method_schema

__all__ = ["run", "demo", "main", "VisionConfig", "LMConfig"]

StateDict = dict[str, Tensor]


# ----------------------------------------------------------------------------------------------- configs
@dataclass
class VisionConfig:
    """Sizes and training budget of the vision testbed."""

    hidden: int = 256
    pretrain_steps: int = 800
    probe_steps: int = 150
    finetune_steps: int = 300
    lora_rank: int = 8
    oft_block: int = 16
    karcher: bool = True  # also run the (slower) Karcher-mean variant of orthomerge_oft
    train_per_task: int = 4000
    val_per_task: int = 1000
    test_per_task: int = 2000
    batch: int = 128


@dataclass
class LMConfig:
    """Sizes and training budget of the char-level LM testbed."""

    d_model: int = 64
    n_layer: int = 2
    n_head: int = 4
    block: int = 48
    batch: int = 16
    pretrain_steps: int = 500
    finetune_steps: int = 250
    eval_batches: int = 6


QUICK_VISION = VisionConfig(
    pretrain_steps=250,
    probe_steps=50,
    finetune_steps=100,
    train_per_task=1500,
    val_per_task=500,
    test_per_task=1000,
    karcher=False,
)
QUICK_LM = LMConfig(pretrain_steps=120, finetune_steps=60, eval_batches=3)

# λ grids (validation picks one point per method and seed)
TA_GRID = [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0]
MEAN_GRID = [0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0]
ROT_GRID = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0]
DO_GRID = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0]


# ----------------------------------------------------------------------------------------------- models
class Backbone(nn.Module):
    """GELU MLP 784 → h → h → h; LoRA factors (``A_i: r×in``, ``B_i: out×r``) are added when ``lora_rank > 0``."""

    def __init__(self, hidden: int, lora_rank: int = 0) -> None:
        super().__init__()
        dims = [784, hidden, hidden, hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.lora_rank = lora_rank
        if lora_rank:
            self.A = nn.ParameterList(
                nn.Parameter(torch.randn(lora_rank, a) / math.sqrt(a)) for a in dims[:-1]
            )
            self.B = nn.ParameterList(nn.Parameter(torch.zeros(b, lora_rank)) for b in dims[1:])

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            y = layer(x)
            if self.lora_rank:
                y = y + F.linear(F.linear(x, self.A[i]), self.B[i])
            x = F.gelu(y)
        return x


def cayley_blocks(P: Tensor) -> Tensor:
    """Block rotations ``R = (I − S)⁻¹(I + S)``, ``S = (P − Pᵀ)/2`` (OFT's Cayley parametrization), ``[nb, b, b]``."""
    S = 0.5 * (P - P.transpose(-1, -2))
    eye = torch.eye(P.shape[-1], dtype=P.dtype).expand_as(P)
    return torch.linalg.solve(eye - S, eye + S)


class OFTBackbone(nn.Module):
    """Frozen :class:`Backbone` with OFT adapters: each layer uses ``W_0 · blockdiag(R_1 … R_nb)`` (block size b).

    Reference: Qiu et al., "Controlling Text-to-Image Diffusion by Orthogonal Finetuning", NeurIPS 2023.
    """

    def __init__(self, base: Backbone, block: int) -> None:
        super().__init__()
        self.base = base
        self.block = block
        self.P = nn.ParameterList(
            nn.Parameter(torch.zeros(layer.in_features // block, block, block)) for layer in base.layers
        )

    def rotations(self) -> list[Tensor]:
        return [cayley_blocks(p) for p in self.P]

    def forward(self, x: Tensor) -> Tensor:
        for layer, R in zip(self.base.layers, self.rotations()):
            xb = x.reshape(x.shape[0], R.shape[0], self.block)
            x = F.gelu(layer(torch.einsum("kcd,nkd->nkc", R, xb).reshape(x.shape[0], -1)))
        return x


def _train(params: Sequence[Tensor], loss_fn: Callable[[], Tensor], steps: int, lr: float) -> None:
    opt = torch.optim.Adam(list(params), lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()


# ----------------------------------------------------------------------------------------------- vision data
@dataclass
class Task:
    name: str
    n_classes: int
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]


def _digits_28() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    x = F.pad(x, (4, 4, 4, 4)).reshape(-1, 784)
    return x, torch.tensor(d.target, dtype=torch.long)


def _vision_tasks(cfg: VisionConfig, seed: int) -> tuple[tuple[Tensor, Tensor], list[Task]]:
    (xtr, ytr), (xte, yte) = load_mnist(flatten=True)
    g = torch.Generator().manual_seed(1000 + seed)
    order = torch.randperm(len(xtr), generator=g)
    test_order = torch.randperm(len(xte), generator=g)
    perm = torch.randperm(784, generator=g)
    pre = order[:10000]
    pool = order[10000:]

    def img(x: Tensor) -> Tensor:
        return x.reshape(-1, 28, 28)

    transforms: list[tuple[str, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], int]] = [
        ("rot90", lambda x: torch.rot90(img(x), 1, (1, 2)).reshape(-1, 784), lambda y: y >= 0, 10),
        ("permuted", lambda x: x[:, perm], lambda y: y >= 0, 10),
        ("invert-0..4", lambda x: 1.0 - x, lambda y: y < 5, 5),
        ("hflip-5..9", lambda x: img(x).flip(2).reshape(-1, 784), lambda y: y >= 5, 5),
    ]
    tasks = []
    ntr, nva, nte = cfg.train_per_task, cfg.val_per_task, cfg.test_per_task
    for i, (name, tf, keep, C) in enumerate(transforms):
        chunk = pool[i * (2 * (ntr + nva)) : (i + 1) * (2 * (ntr + nva))]  # 2× to survive class filtering
        xs, ys = xtr[chunk], ytr[chunk]
        m = keep(ys)
        xs, ys = xs[m], ys[m]
        xt, yt = xte[test_order], yte[test_order]
        mt = keep(yt)
        xt, yt = xt[mt][:nte], yt[mt][:nte]
        off = 5 if name.startswith("hflip") else 0
        tasks.append(
            Task(
                name,
                C,
                (tf(xs[:ntr]), ys[:ntr] - off),
                (tf(xs[ntr : ntr + nva]), ys[ntr : ntr + nva] - off),
                (tf(xt), yt - off),
            )
        )
    xd, yd = _digits_28()
    p = torch.randperm(len(xd), generator=g)
    xd, yd = xd[p], yd[p]
    tasks.append(
        Task(
            "sklearn-digits",
            10,
            (xd[:1200], yd[:1200]),
            (xd[1200:1450], yd[1200:1450]),
            (xd[1450:], yd[1450:]),
        )
    )
    return (xtr[pre], ytr[pre]), tasks


def _batches(x: Tensor, y: Tensor, batch: int, g: torch.Generator) -> Callable[[], tuple[Tensor, Tensor]]:
    def nxt() -> tuple[Tensor, Tensor]:
        i = torch.randint(len(x), (batch,), generator=g)
        return x[i], y[i]

    return nxt


@torch.no_grad()
def _acc(backbone: nn.Module, head: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((head(backbone(x)).argmax(-1) == y).float().mean())


# ----------------------------------------------------------------------------------------------- merging
def _merge_sd(name: str, base: StateDict, fts: Sequence[Any], params: dict[str, Any], seed: int) -> StateDict:
    """Merge tensor by tensor through the registry (``fts``: state dicts, or per-key input lists for LoRA)."""
    fn = MERGE_METHODS.get(name)
    takes_gen = method_schema(name).takes_generator
    out = {}
    for i, k in enumerate(base):
        kw = dict(params)
        if takes_gen and MERGE_METHODS.capabilities(name).get("stochastic"):
            kw["generator"] = torch.Generator().manual_seed(seed * 7919 + i)
        inputs = [ft[k] for ft in fts]
        out[k] = fn(base[k], inputs, **kw)
    return out


def _scaled(base: StateDict, merged1: StateDict, lam: float) -> StateDict:
    return {k: base[k] + lam * (merged1[k] - base[k]) for k in base}


@dataclass
class Candidate:
    """One method: how to build merged state dicts for each grid point (label → state dict)."""

    method: str
    label: str
    build: Callable[[], dict[str, StateDict]]


def _select(
    cands: Sequence[Candidate],
    val_score: Callable[[StateDict], tuple[float, list[float]]],
    test_score: Callable[[StateDict], tuple[float, list[float]]],
) -> dict[str, dict[str, Any]]:
    res = {}
    for c in cands:
        t0 = time.perf_counter()
        grid = c.build()
        merge_s = (time.perf_counter() - t0) / max(1, len(grid))
        best = max(grid, key=lambda g: val_score(grid[g])[0])
        test, per = test_score(grid[best])
        res[c.label] = {
            "method": c.method,
            "choice": best,
            "val": val_score(grid[best])[0],
            "test": test,
            "per_task": per,
            "merge_s_per_point": merge_s,
            "grid_size": len(grid),
        }
    return res


def _full_candidates(base: StateDict, fts: Sequence[StateDict], seed: int, T: int) -> list[Candidate]:
    def linear(name: str, grid: Sequence[float], **p: Any) -> Callable[[], dict[str, StateDict]]:
        def b() -> dict[str, StateDict]:
            m1 = _merge_sd(name, base, fts, {"lambda_": 1.0, **p}, seed)
            return {f"λ={g}": _scaled(base, m1, g) for g in grid}

        return b

    def ortho(residual: str, rgrid: Sequence[float]) -> Callable[[], dict[str, StateDict]]:
        # OrthoMerge is W_0 exp(λ_rot A*) + λ_res · merge_res(E_t): exactly separable, so the grid is assembled
        # from one residual-only call (λ_rot = 0 ⇒ W_0 + merge_res) and one rotation-only call per λ_rot.
        def b() -> dict[str, StateDict]:
            common = {"residual_merge": residual}
            res1 = _merge_sd(
                "orthomerge", base, fts, {"lambda_": 0.0, "residual_lambda": 1.0, **common}, seed
            )
            out = {}
            for lr in (0.1, 0.25, 0.5, 1.0, 2.0):
                rot = _merge_sd(
                    "orthomerge", base, fts, {"lambda_": lr, "residual_lambda": 0.0, **common}, seed
                )
                for rl in rgrid:
                    out[f"λ_rot={lr}, λ_res={rl}"] = {k: rot[k] + rl * (res1[k] - base[k]) for k in base}
            return out

        return b

    return [
        Candidate("task_arithmetic", "task_arithmetic", linear("task_arithmetic", TA_GRID)),
        Candidate("ties", "ties (k=20%)", linear("ties", MEAN_GRID, density=[0.2] * T)),
        Candidate("dare_linear", "dare (p=0.9) + TA", linear("dare_linear", TA_GRID, density=[0.1] * T)),
        Candidate(
            "orthomerge", "orthomerge (TA residual)", ortho("sum", [0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7])
        ),
        Candidate("orthomerge", "orthomerge (TIES residual)", ortho("ties", [0.5, 1.0, 1.5, 2.0, 3.0, 4.0])),
        Candidate("dc_merge", "dc_merge (linear smoothing)", linear("dc_merge", MEAN_GRID)),
        Candidate("dc_merge", "dc_merge (no smoothing)", linear("dc_merge", MEAN_GRID, smoothing="none")),
    ]


# ----------------------------------------------------------------------------------------------- vision run
def _vision_seed(cfg: VisionConfig, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    (xp, yp), tasks = _vision_tasks(cfg, seed)
    T = len(tasks)
    t0 = time.perf_counter()
    base = Backbone(cfg.hidden)
    head0 = nn.Linear(cfg.hidden, 10)
    nb = _batches(xp, yp, cfg.batch, g)

    def pre_loss() -> Tensor:
        x, y = nb()
        return F.cross_entropy(head0(base(x)), y)

    _train(list(base.parameters()) + list(head0.parameters()), pre_loss, cfg.pretrain_steps, 1e-3)
    base.requires_grad_(False)
    base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}

    experts, heads, lora_experts, lora_heads = [], [], [], []
    oft_experts: list[list[Tensor]] = []
    oft_heads: list[nn.Module] = []
    for task in tasks:
        head = nn.Linear(cfg.hidden, task.n_classes)
        nb_t = _batches(*task.train, cfg.batch, g)

        def probe_loss(h: nn.Module = head, nbt: Callable = nb_t) -> Tensor:
            x, y = nbt()
            return F.cross_entropy(h(base(x)), y)

        _train(head.parameters(), probe_loss, cfg.probe_steps, 1e-2)
        probe_sd = {k: v.clone() for k, v in head.state_dict().items()}
        # full fine-tune
        bb = Backbone(cfg.hidden)
        bb.load_state_dict(base_sd)

        def ft_loss(b: nn.Module = bb, h: nn.Module = head, nbt: Callable = nb_t) -> Tensor:
            x, y = nbt()
            return F.cross_entropy(h(b(x)), y)

        _train(list(bb.parameters()) + list(head.parameters()), ft_loss, cfg.finetune_steps, 3e-4)
        experts.append({k: v.detach().clone() for k, v in bb.state_dict().items()})
        heads.append(head.requires_grad_(False))
        # LoRA fine-tune from the same probe head
        lh = nn.Linear(cfg.hidden, task.n_classes)
        lh.load_state_dict(probe_sd)
        lb = Backbone(cfg.hidden, cfg.lora_rank)
        lb.load_state_dict(base_sd, strict=False)
        lb.layers.requires_grad_(False)

        def lora_loss(b: nn.Module = lb, h: nn.Module = lh, nbt: Callable = nb_t) -> Tensor:
            x, y = nbt()
            return F.cross_entropy(h(b(x)), y)

        _train(list(lb.A) + list(lb.B) + list(lh.parameters()), lora_loss, cfg.finetune_steps, 2e-3)
        lora_experts.append([(lb.A[i].detach().clone(), lb.B[i].detach().clone()) for i in range(3)])
        lora_heads.append(lh.requires_grad_(False))
        # OFT fine-tune (block-diagonal Cayley rotations of each layer's input side) from the same probe head
        oh = nn.Linear(cfg.hidden, task.n_classes)
        oh.load_state_dict(probe_sd)
        ob = OFTBackbone(base, cfg.oft_block)

        def oft_loss(b: nn.Module = ob, h: nn.Module = oh, nbt: Callable = nb_t) -> Tensor:
            x, y = nbt()
            return F.cross_entropy(h(b(x)), y)

        _train(list(ob.P) + list(oh.parameters()), oft_loss, cfg.finetune_steps, 5e-3)
        with torch.no_grad():
            oft_experts.append([R.detach().clone() for R in ob.rotations()])
        oft_heads.append(oh.requires_grad_(False))
    train_s = time.perf_counter() - t0

    def model_of(sd: StateDict) -> Backbone:
        m = Backbone(cfg.hidden)
        m.load_state_dict(sd)
        return m

    def scorer(
        split: str, hs: Sequence[nn.Module], ref: list[float]
    ) -> Callable[[StateDict], tuple[float, list[float]]]:
        def score(sd: StateDict) -> tuple[float, list[float]]:
            m = model_of(sd)
            accs = [_acc(m, h, *getattr(t, split)) for t, h in zip(tasks, hs)]
            return statistics.fmean(a / r for a, r in zip(accs, ref)), accs

        return score

    exp_val = [_acc(model_of(e), h, *t.val) for e, h, t in zip(experts, heads, tasks)]
    exp_test = [_acc(model_of(e), h, *t.test) for e, h, t in zip(experts, heads, tasks)]
    base_test = [_acc(base, h, *t.test) for h, t in zip(heads, tasks)]
    full = _select(
        _full_candidates(base_sd, experts, seed, T),
        scorer("val", heads, exp_val),
        scorer("test", heads, exp_test),
    )
    full["pretrained + task heads"] = {
        "method": "none",
        "choice": "-",
        "test": statistics.fmean(a / r for a, r in zip(base_test, exp_test)),
        "per_task": base_test,
    }

    # LoRA track: the three backbone matrices carry adapters; biases are untouched
    wkeys = [f"layers.{i}.weight" for i in range(3)]

    def lora_dense(i: int) -> StateDict:
        sd = dict(base_sd)
        for j, k in enumerate(wkeys):
            A, B = lora_experts[i][j]
            sd[k] = base_sd[k] + B @ A
        return sd

    lora_full = [lora_dense(i) for i in range(T)]
    lexp_val = [_acc(model_of(e), h, *t.val) for e, h, t in zip(lora_full, lora_heads, tasks)]
    lexp_test = [_acc(model_of(e), h, *t.test) for e, h, t in zip(lora_full, lora_heads, tasks)]
    wbase = {k: base_sd[k] for k in wkeys}

    def with_base(w: StateDict) -> StateDict:
        return {**base_sd, **w}

    def lin_lora_from(
        dense: Sequence[StateDict], name: str, grid: Sequence[float], **p: Any
    ) -> Callable[[], dict[str, StateDict]]:
        def b() -> dict[str, StateDict]:
            m1 = _merge_sd(
                name, wbase, [{k: e[k] for k in wkeys} for e in dense], {"lambda_": 1.0, **p}, seed
            )
            return {f"λ={x}": with_base(_scaled(wbase, m1, x)) for x in grid}

        return b

    def lin_lora(name: str, grid: Sequence[float], **p: Any) -> Callable[[], dict[str, StateDict]]:
        def b() -> dict[str, StateDict]:
            m1 = _merge_sd(
                name, wbase, [{k: e[k] for k in wkeys} for e in lora_full], {"lambda_": 1.0, **p}, seed
            )
            return {f"λ={x}": with_base(_scaled(wbase, m1, x)) for x in grid}

        return b

    def do_lora(**p: Any) -> Callable[[], dict[str, StateDict]]:
        def b() -> dict[str, StateDict]:
            per_key = [{k: lora_experts[i][j] for j, k in enumerate(wkeys)} for i in range(T)]
            m1 = _merge_sd("do_merging", wbase, per_key, {"lambda_": 1.0, **p}, seed)
            return {f"λ={x}": with_base(_scaled(wbase, m1, x)) for x in DO_GRID}

        return b

    lora_c = [
        Candidate("task_arithmetic", "task_arithmetic", lin_lora("task_arithmetic", TA_GRID)),
        Candidate("ties", "ties (k=20%)", lin_lora("ties", MEAN_GRID, density=[0.2] * T)),
        Candidate("dare_linear", "dare (p=0.9) + TA", lin_lora("dare_linear", TA_GRID, density=[0.1] * T)),
        Candidate(
            "dc_merge", "dc_merge (r = LoRA rank)", lin_lora("dc_merge", MEAN_GRID, rank=cfg.lora_rank)
        ),
        Candidate("do_merging", "do_merging", do_lora()),
        Candidate("do_merging", "do_merging (no orthogonalization)", do_lora(orthogonalize=False)),
    ]
    lora = _select(lora_c, scorer("val", lora_heads, lexp_val), scorer("test", lora_heads, lexp_test))

    # OFT track: rotations merged on SO(b) (orthomerge_oft) vs task arithmetic on the materialized weights
    def oft_dense(Rs: Sequence[Tensor]) -> StateDict:
        return {**base_sd, **{k: base_sd[k] @ torch.block_diag(*R) for k, R in zip(wkeys, Rs)}}

    oft_full = [oft_dense(r) for r in oft_experts]
    oexp_val = [_acc(model_of(e), h, *t.val) for e, h, t in zip(oft_full, oft_heads, tasks)]
    oexp_test = [_acc(model_of(e), h, *t.test) for e, h, t in zip(oft_full, oft_heads, tasks)]

    def oft_merge(**p: Any) -> Callable[[], dict[str, StateDict]]:
        fn = MERGE_METHODS.get("orthomerge_oft")

        def b() -> dict[str, StateDict]:
            out = {}
            for lam in ROT_GRID:
                out[f"λ={lam}"] = oft_dense(
                    [
                        fn(None, [oft_experts[i][j] for i in range(T)], lambda_=lam, **p)
                        for j in range(len(wkeys))
                    ]
                )
            return out

        return b

    oft_c = [
        Candidate("task_arithmetic", "task_arithmetic", lin_lora_from(oft_full, "task_arithmetic", TA_GRID)),
        Candidate("orthomerge_oft", "orthomerge_oft (Lie, magnitude-corrected)", oft_merge()),
        *(
            [
                Candidate(
                    "orthomerge_oft",
                    "orthomerge_oft (Karcher, magnitude-corrected)",
                    oft_merge(mean="karcher"),
                )
            ]
            if cfg.karcher
            else []
        ),
        Candidate(
            "orthomerge_oft",
            "orthomerge_oft (Lie mean, no correction)",
            oft_merge(magnitude_correction=False),
        ),
    ]
    oft = _select(oft_c, scorer("val", oft_heads, oexp_val), scorer("test", oft_heads, oexp_test))

    # diagnostics of the full fine-tunes' task vectors
    tvs = task_vectors(base_sd, experts)
    wtv = [{k: tv[k] for k in wkeys} for tv in tvs]
    off = ~torch.eye(T, dtype=torch.bool)
    ltv = [{k: lora_full[i][k] - base_sd[k] for k in wkeys} for i in range(T)]
    lam_ta = float(full["task_arithmetic"]["choice"].split("=")[1])
    tmpl = Backbone(cfg.hidden)

    def fwd_for(t: int) -> Callable[[StateDict, Tensor], Tensor]:
        def f(p: StateDict, x: Tensor) -> Tensor:
            return heads[t](torch.func.functional_call(tmpl, p, (x,)))

        return f

    # ξ(α*) of task arithmetic, each task scored by its own head on its validation inputs
    xi = weight_disentanglement_error(
        [fwd_for(t) for t in range(T)], base_sd, tvs, [t.val[0] for t in tasks], [lam_ta] * T
    )
    diag = {
        "cosine_mean_offdiag": float(pairwise_cosine(tvs)[off].mean()),
        "cosine_max_offdiag": float(pairwise_cosine(tvs)[off].max()),
        "subspace_overlap_rank8_left": float(subspace_overlap(wtv, rank=8).mean[off].mean()),
        "subspace_overlap_rank8_right": float(subspace_overlap(wtv, rank=8, side="right").mean[off].mean()),
        "sign_conflict_rate_k20": sign_conflict_rate(tvs, 0.2),
        "lora_cosine_mean_offdiag": float(pairwise_cosine(ltv)[off].mean()),
        "lora_subspace_overlap_rank8_left": float(subspace_overlap(ltv, rank=8).mean[off].mean()),
        "disentanglement_error_TA_at_lambda*": xi / T,
        "lambda_TA": lam_ta,
    }
    log(
        f"  vision seed {seed}: train {train_s:.0f}s, experts {[round(a, 3) for a in exp_test]}, "
        f"TA {full['task_arithmetic']['test']:.3f}"
    )
    return {
        "tasks": [t.name for t in tasks],
        "expert_test": exp_test,
        "lora_expert_test": lexp_test,
        "pretrained_test": base_test,
        "full": full,
        "lora": lora,
        "oft": oft,
        "oft_expert_test": oexp_test,
        "diagnostics": diag,
        "train_s": train_s,
    }


# ----------------------------------------------------------------------------------------------- LM run
def _lm_seed(cfg: LMConfig, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    vocab = char_corpus("tinyshakespeare+wikitext2_valid").chars
    names = ["tinyshakespeare", "wikitext2_valid"]
    corpora = [char_corpus(n, val_fraction=0.1, chars=vocab) for n in names]
    splits = []
    for c in corpora:
        h = len(c.val) // 2
        splits.append({"train": c.train, "val": c.val[:h], "test": c.val[h:]})
    t0 = time.perf_counter()
    model = CharGPT(
        len(vocab), d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head, block_size=cfg.block
    )
    step = [0]

    def pre_loss() -> Tensor:
        d = splits[step[0] % 2]["train"]
        step[0] += 1
        x, y = get_batch(d, cfg.batch, cfg.block, g)
        return model(x, y)[1]

    _train(model.parameters(), pre_loss, cfg.pretrain_steps, 2e-3)
    base_sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    experts = []
    for s in splits:
        model.load_state_dict(base_sd)

        def ft_loss(d: Tensor = s["train"]) -> Tensor:
            x, y = get_batch(d, cfg.batch, cfg.block, g)
            return model(x, y)[1]

        _train(model.parameters(), ft_loss, cfg.finetune_steps, 1e-3)
        experts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    train_s = time.perf_counter() - t0
    eval_sets = {
        split: [
            [
                get_batch(s[split], 32, cfg.block, torch.Generator().manual_seed(77 + b))
                for b in range(cfg.eval_batches)
            ]
            for s in splits
        ]
        for split in ("val", "test")
    }
    evalm = CharGPT(
        len(vocab), d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head, block_size=cfg.block
    )

    @torch.no_grad()
    def losses(sd: StateDict, split: str) -> list[float]:
        evalm.load_state_dict(sd)
        return [statistics.fmean(float(evalm(x, y)[1]) for x, y in bs) for bs in eval_sets[split]]

    exp_l = {sp: [losses(e, sp)[i] for i, e in enumerate(experts)] for sp in ("val", "test")}
    base_l = losses(base_sd, "test")

    def scorer(split: str) -> Callable[[StateDict], tuple[float, list[float]]]:
        def score(sd: StateDict) -> tuple[float, list[float]]:
            ls = losses(sd, split)
            return statistics.fmean(r / a for a, r in zip(ls, exp_l[split])), ls

        return score

    res = _select(_full_candidates(base_sd, experts, seed, 2), scorer("val"), scorer("test"))
    res["pretrained base"] = {
        "method": "none",
        "choice": "-",
        "test": statistics.fmean(r / a for a, r in zip(base_l, exp_l["test"])),
        "per_task": base_l,
    }
    tvs = task_vectors(base_sd, experts)
    mats = [{k: v for k, v in tv.items() if v.dim() == 2} for tv in tvs]
    diag = {
        "cosine": float(pairwise_cosine(tvs)[0, 1]),
        "subspace_overlap_rank8_left": float(subspace_overlap(mats, rank=8).mean[0, 1]),
        "sign_conflict_rate_k20": sign_conflict_rate(tvs, 0.2),
    }
    log(
        f"  LM seed {seed}: train {train_s:.0f}s, expert losses {[round(x, 3) for x in exp_l['test']]}, "
        f"TA {res['task_arithmetic']['test']:.4f}"
    )
    return {
        "tasks": names,
        "expert_test_loss": exp_l["test"],
        "base_test_loss": base_l,
        "full": res,
        "diagnostics": diag,
        "train_s": train_s,
    }


# ----------------------------------------------------------------------------------------------- driver
def _summary(per_seed: Sequence[dict[str, Any]], track: str) -> list[dict[str, Any]]:
    labels = list(per_seed[0][track])
    ta = [s[track]["task_arithmetic"]["test"] for s in per_seed]
    rows = []
    for lab in labels:
        vals = [s[track][lab]["test"] for s in per_seed]
        d = [v - t for v, t in zip(vals, ta)]
        rows.append(
            {
                "label": lab,
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "per_seed": vals,
                "delta_vs_ta": statistics.fmean(d),
                "wins_vs_ta": sum(x > 0 for x in d),
                "choices": [s[track][lab]["choice"] for s in per_seed],
                "merge_s": statistics.fmean(s[track][lab].get("merge_s_per_point", 0.0) for s in per_seed),
            }
        )
    return rows


def run(
    out_dir: Path | None = None,
    quick: bool = False,
    seeds: Sequence[int] = (0, 1, 2),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run both testbeds for ``seeds`` and write ``merge_quality{_quick}.{json,md,png}`` to ``out_dir``.

    Args:
        out_dir: output folder (default ``./orthokit_results``).
        quick: shorter training and one pass (for ``make demo``).
        seeds: random seeds (each retrains the base model and all experts).
        log: progress printer.

    Returns:
        The results dict (also written as JSON).
    """
    from orthokit.bench.report import result_stem, results_dir

    out = results_dir(out_dir)
    vcfg, lcfg = (QUICK_VISION, QUICK_LM) if quick else (VisionConfig(), LMConfig())
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    vision, lm = [], []
    for s in seeds:
        vision.append(_vision_seed(vcfg, s, log))
        lm.append(_lm_seed(lcfg, s, log))
    res = {
        "quick": quick,
        "seeds": list(seeds),
        "vision_config": vcfg.__dict__,
        "lm_config": lcfg.__dict__,
        "vision": vision,
        "lm": lm,
        "summary": {
            "vision_full": _summary(vision, "full"),
            "vision_lora": _summary(vision, "lora"),
            "vision_oft": _summary(vision, "oft"),
            "lm": _summary(lm, "full"),
        },
        "wall_s": time.perf_counter() - t0,
        "machine": machine_info(),
    }
    stem = result_stem("merge_quality", quick)
    res["files"] = [str(out / f"{stem}.{ext}") for ext in ("md", "json", "png")]
    atomic_write_json(out / f"{stem}.json", res)
    _plot(res, out / f"{stem}.png")
    atomic_write_text(out / f"{stem}.md", markdown(res, png=f"{stem}.png"))
    return res


def _fmt_rows(rows: Sequence[dict[str, Any]], n_seeds: int) -> list[list[str]]:
    """Table rows; with one seed there is no spread and no win count (only the difference is shown)."""
    out = []
    for r in rows:
        wins = f" ({r['wins_vs_ta']}/{n_seeds})" if n_seeds > 1 else ""
        paired = (
            "–"
            if r["label"] == "task_arithmetic" or "pretrained" in r["label"]
            else f"{100 * r['delta_vs_ta']:+.1f}{wins}"
        )
        ms = f"{1000 * r['merge_s']:.0f}" if r["merge_s"] else "–"
        mean = f"{r['mean']:.3f} ± {r['std']:.3f}" if n_seeds > 1 else f"{r['mean']:.3f}"
        out.append([r["label"], mean, paired, "; ".join(map(str, r["choices"])), ms])
    return out


def headline(res: dict[str, Any]) -> str:
    """One line: best orthogonal method vs task arithmetic in each track (paired mean difference)."""
    parts = []
    for track, rows in res["summary"].items():
        ta = next(r for r in rows if r["label"] == "task_arithmetic")
        cands = [r for r in rows if r["label"].startswith(("orthomerge", "dc_merge", "do_merging"))]
        best = max(cands, key=lambda r: r["mean"])
        n = len(res["seeds"])
        wins = f", wins {best['wins_vs_ta']}/{n}" if n > 1 else ""
        parts.append(
            f"{track}: {best['label']} {best['mean']:.3f} vs TA {ta['mean']:.3f} "
            f"({100 * best['delta_vs_ta']:+.1f} pts{wins})"
        )
    return "; ".join(parts)


def markdown(res: dict[str, Any], png: str | None = None, level: int = 1) -> str:
    """Markdown report of :func:`run`'s results."""
    h = "#" * level
    n = len(res["seeds"])
    hdr = [
        "method",
        "normalized (mean ± std over seeds)" if n > 1 else "normalized (1 seed)",
        "Δ vs TA, pts (wins)" if n > 1 else "Δ vs TA, pts",
        "chosen on val per seed",
        "merge ms / grid point",
    ]
    v0, l0 = res["vision"][0], res["lm"][0]
    lines = [
        f"{h} Merge quality benchmark{' (quick)' if res['quick'] else ''}",
        "",
        f"Seeds {res['seeds']}; every seed retrains the base model and all experts; λ chosen on validation, "
        f"test reported; Δ = paired (same seed) difference to task arithmetic in normalized points. "
        + (
            "One seed: no spread or win count; differences under ~1 point are within noise. "
            if n == 1
            else ""
        )
        + f"Wall time {res['wall_s']:.0f} s on {res['machine']['cpu_count']} CPUs "
        f"({res['machine']['threads']} torch threads, shared machine).",
        "",
        f"{h}# Vision: MLP pre-trained on MNIST, {len(v0['tasks'])} tasks ({', '.join(v0['tasks'])}), full fine-tunes",
        "",
        "Normalized accuracy = mean over tasks of acc(merged)/acc(expert). Expert test accuracies (seed 0): "
        + ", ".join(f"{t} {a:.3f}" for t, a in zip(v0["tasks"], v0["expert_test"]))
        + ".",
        "",
        md_table(hdr, _fmt_rows(res["summary"]["vision_full"], n)),
        "",
        f"{h}# Vision, LoRA (rank {res['vision_config']['lora_rank']}) fine-tunes of the same backbone",
        "",
        "LoRA expert test accuracies (seed 0): "
        + ", ".join(f"{t} {a:.3f}" for t, a in zip(v0["tasks"], v0["lora_expert_test"]))
        + ".",
        "",
        md_table(hdr, _fmt_rows(res["summary"]["vision_lora"], n)),
        "",
        f"{h}# Vision, OFT fine-tunes (block-diagonal Cayley rotations, block {res['vision_config']['oft_block']}) "
        "of the same backbone",
        "",
        "Task arithmetic adds the materialized deltas W0·R_t − W0; orthomerge_oft merges the rotations R_t on SO(b) "
        "and returns an exactly orthogonal adapter. OFT expert test accuracies (seed 0): "
        + ", ".join(f"{t} {a:.3f}" for t, a in zip(v0["tasks"], v0["oft_expert_test"]))
        + ".",
        "",
        md_table(hdr, _fmt_rows(res["summary"]["vision_oft"], n)),
        "",
        f"{h}# Language: CharGPT ({res['lm_config']['d_model']}-d, {res['lm_config']['n_layer']} layers) "
        "fine-tuned on Tiny Shakespeare vs WikiText-2",
        "",
        "Normalized score = mean over the two corpora of loss(expert)/loss(merged) (held-out test halves). "
        "Expert test losses (seed 0): "
        + ", ".join(f"{t} {x:.3f}" for t, x in zip(l0["tasks"], l0["expert_test_loss"]))
        + "; base: "
        + ", ".join(f"{x:.3f}" for x in l0["base_test_loss"])
        + ".",
        "",
        md_table(hdr, _fmt_rows(res["summary"]["lm"], n)),
        "",
        f"{h}# Task-vector diagnostics (per seed)",
        "",
    ]
    keys = list(res["vision"][0]["diagnostics"])
    lines.append(
        md_table(
            ["vision diagnostic", *[f"seed {s}" for s in res["seeds"]]],
            [[k, *[f"{v['diagnostics'][k]:.4g}" for v in res["vision"]]] for k in keys],
        )
    )
    lines.append("")
    keys = list(res["lm"][0]["diagnostics"])
    lines.append(
        md_table(
            ["LM diagnostic", *[f"seed {s}" for s in res["seeds"]]],
            [[k, *[f"{v['diagnostics'][k]:.4g}" for v in res["lm"]]] for k in keys],
        )
    )
    lines += ["", f"Headline: {headline(res)}", ""]
    if png:
        lines += [f"![merge quality]({png})", ""]
    return "\n".join(lines)


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracks = [
        ("vision_full", "Vision, full fine-tunes"),
        ("vision_lora", "Vision, LoRA"),
        ("vision_oft", "Vision, OFT"),
        ("lm", "Char-LM"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(21, 5.5))
    for ax, (key, title) in zip(axes, tracks):
        rows = res["summary"][key]
        labels = [r["label"] for r in rows]
        means = [r["mean"] for r in rows]
        stds = [r["std"] for r in rows]
        colors = [
            "tab:green"
            if lab.startswith(("orthomerge", "dc_merge", "do_merging"))
            else "tab:gray"
            if "pretrained" in lab
            else "tab:blue"
            for lab in labels
        ]
        y = range(len(rows))
        ax.barh(list(y), means, xerr=stds, color=colors)
        for i, r in enumerate(rows):
            for v in r["per_seed"]:
                ax.plot(v, i, "k.", ms=4)
        ax.set_yticks(list(y), labels, fontsize=8)
        lo = min(min(r["per_seed"]) for r in rows)
        ax.set_xlim(max(0.0, lo - 0.05), 1.0 if key != "lm" else max(1.0, max(means) + 0.01))
        ax.set_title(title)
        ax.set_xlabel("normalized score (1 = experts)")
        ax.invert_yaxis()
    fig.suptitle("Merge quality (green: orthogonal/subspace methods; dots: seeds; bars: mean ± std)")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def demo_summary(res: dict[str, Any]) -> tuple[str, str, str]:
    """(orthokit, anchor, verdict) for the demo's summary row: the best orthogonal/subspace method vs task
    arithmetic on the vision track with full fine-tunes (paired difference; win count only with > 1 seed)."""
    rows = res["summary"]["vision_full"]
    ta = next(r for r in rows if r["label"] == "task_arithmetic")
    cands = [r for r in rows if r["label"].startswith(("orthomerge", "dc_merge", "do_merging"))]
    best = max(cands, key=lambda r: r["mean"])
    n = len(res["seeds"])
    wins = f", wins {best['wins_vs_ta']}/{n} seeds" if n > 1 else ""
    return (
        f"{best['label']} {best['mean']:.3f}",
        f"task arithmetic {ta['mean']:.3f}",
        f"{100 * best['delta_vs_ta']:+.1f} pts{wins}",
    )


def demo(out_dir: Path) -> str:
    """Quick single-seed run (a few minutes on 2 cores); returns a markdown section. ``make demo`` uses
    :func:`orthokit.bench.merge.demo`, which runs this and the speed comparison."""
    res = run(out_dir=Path(out_dir), quick=True, seeds=(0,))
    return markdown(res, png="merge_quality_quick.png", level=2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="orthokit bench merge_quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter training (for a smoke run)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; quick: 0)")
    from orthokit.bench.report import add_out_argument, announce

    add_out_argument(ap)
    args = ap.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    res = run(out_dir=args.out, quick=args.quick, seeds=seeds)
    print(markdown(res))
    announce(res["files"], "orthokit bench merge_quality")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""MNIST backward-compatibility benchmark: independent training vs BCT, OCA, BT² and λ-orthogonality.

``orthokit bench align [--quick] [--seeds 0 1 2] [--out DIR]`` (or ``python benchmarks/align_compat.py``).

Protocol (BCT, Shen et al., CVPR 2020; evaluation as in ``apple/ml-fct`` ``utils/eval_utils.py``, which the OCA
and BT² repositories inherit — reference notes D1):

1. **Old model**: a small CNN (:class:`ConvTrunk`, 8/16 channels, a 64-d embedding) plus a bias-free linear
   classifier, trained with cross-entropy on the digits 0–4 of a training subset.
2. **New model**: a bigger CNN (16/32 channels) trained on all 10 digits of the same subset with each
   method registered in :data:`orthokit.align.registry.COMPAT_METHODS` (``independent``, ``bct``, ``oca``,
   ``bt2``, ``lambda_orthogonal``) through the shared interface ``method.loss(x, y)``,
   ``new_features``, ``compatible_features``, ``extra_parameters``. Methods that need the old classifier get
   the frozen prototypes of :func:`orthokit.align.bct.synthesize_prototypes` (old classifier rows for 0–4,
   normalised class means of old features for 5–9), and every method gets the frozen old model.
3. **Retrieval on the MNIST test split**, all 10 classes: a fixed query set (1,000 images) against the other
   9,000 as gallery; ``old/old`` (old query, old gallery), ``new/old`` (the new model's *compatible* query
   feature against the old gallery: the backfill-free setting), ``new/new``; CMC top-1/top-5 and mAP from
   :func:`orthokit.align.protocol.compatibility_report` (given the precomputed old, new and compatible
   features; cosine distance, features truncated to the smaller width as in ml-fct). BCT's empirical
   criterion: ``new/old > old/old``.

Three seeds (each seed draws its own training subset, initialisation and batch order and trains its own old
model); mean ± sample std. Results (markdown, JSON, PNG of grouped bars) go to ``<out>/align_compat*`` through
atomic writes (``--quick``: ``align_compat_quick*``).

Example:
    >>> from orthokit.bench.align import ConvTrunk, CompatConfig
    >>> import torch
    >>> trunk = ConvTrunk(channels=4, feat_dim=16)
    >>> tuple(trunk(torch.randn(3, 784)).shape)          # flat or [B, 1, 28, 28] images -> [B, feat_dim]
    (3, 16)
    >>> CompatConfig().old_dim, CompatConfig().methods[0]
    (64, 'independent')
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from orthokit.bench.data import load_mnist
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

__all__ = [
    "CompatConfig",
    "ConvTrunk",
    "OldModel",
    "FULL",
    "QUICK",
    "DEMO",
    "THEIRS_CIFAR100",
    "VARIANTS",
    "run",
    "markdown",
    "trainable_parameters",
    "add_trainable_parameters",
    "rerender",
    "demo",
    "main",
]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SETTINGS = ("old/old", "new/old", "new/new")
METRIC_KEYS = ("top1", "top5", "mAP", "top1_seen", "top1_unseen")

#: BT² README (Zhou et al., ICCV 2023, ``YifeiZhou02/BT-2``), CIFAR-100 50→100 classes, ResNet-50, top-1 %.
#: Quoted as the papers' anchor; not measured here. ``None``: not given in the README.
THEIRS_CIFAR100: dict[str, dict[str, float | None]] = {
    "independent": {"old/old": 33.6, "new/old": 0.8, "new/new": 62.7},
    "bct": {"old/old": 33.6, "new/old": 25.0, "new/new": 60.0},
    "bt2": {"old/old": 33.6, "new/old": 38.7, "new/new": 62.4},
}


@dataclass(frozen=True)
class CompatConfig:
    """One benchmark configuration (defaults: the committed full run).

    Args:
        n_train: training images drawn (per seed) from the 60k MNIST training split; the new model trains on
            all of them, the old model on those with a label below ``old_classes``.
        n_old: the old model trains on the first ``n_old`` images of its classes in the subset (``None``: all of
            them) — an old model trained on less data, as old models usually are.
        old_classes: the old model sees digits ``0 … old_classes−1``.
        old_channels / new_channels: first conv width of the old / new :class:`ConvTrunk` (the second is twice).
        old_dim: embedding width of the old model (and the compatible part of the new one).
        extra_dims: ``k`` extra embedding dims of methods registered with ``extra_dims`` (OCA, BT²): their
            backbone outputs ``old_dim + k``.
        old_steps / new_steps: Adam steps (cosine-decayed learning rate ``lr``) of batch ``batch_size``.
        n_query / n_gallery: retrieval split of the 10k test images (fixed across seeds).
        metric: ``"cosine"`` or ``"l2"`` retrieval distance.
        methods: names in ``COMPAT_METHODS`` or :data:`VARIANTS`; ``independent`` is the baseline the goals
            compare with.
    """

    n_train: int = 20000
    n_old: int | None = None
    old_classes: int = 5
    old_channels: int = 8
    new_channels: int = 16
    old_dim: int = 64
    extra_dims: int = 32
    old_steps: int = 200
    new_steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3
    n_query: int = 1000
    n_gallery: int = 9000
    metric: str = "cosine"
    methods: tuple[str, ...] = ("independent", "bct", "bct_mlfct", "oca", "bt2", "lambda_orthogonal")

    def check(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        for name in ("n_train", "old_channels", "new_channels", "old_dim", "old_steps", "new_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"CompatConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("batch_size", "n_query", "n_gallery"):
            if getattr(self, name) < 1:
                raise ValueError(f"CompatConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 1 < self.old_classes < 10:
            raise ValueError(f"CompatConfig.old_classes must be in 2..9, got {self.old_classes}")
        if self.extra_dims < 0:
            raise ValueError(f"CompatConfig.extra_dims must be >= 0, got {self.extra_dims}")
        if self.n_query + self.n_gallery > 10000:
            raise ValueError(
                f"CompatConfig.n_query + n_gallery = {self.n_query + self.n_gallery} exceeds the 10000 test images"
            )
        if self.n_old is not None and self.n_old < 1:
            raise ValueError(f"CompatConfig.n_old must be >= 1 or None, got {self.n_old}")
        if self.n_train > 60000:
            raise ValueError(f"CompatConfig.n_train = {self.n_train} exceeds the 60000 training images")
        if not self.lr > 0:
            raise ValueError(f"CompatConfig.lr must be > 0, got {self.lr}")
        if self.metric not in ("cosine", "l2"):
            raise ValueError(f"CompatConfig.metric must be 'cosine' or 'l2', got {self.metric!r}")
        if not self.methods:
            raise ValueError("CompatConfig.methods is empty")


#: the committed full run (3 seeds, six rows: 13.7 min on one thread of the shared 2-core host under heavy load;
#: the five rows before ``bct_mlfct`` took 6.0 min unloaded, and the extra row costs one BCT training per seed)
FULL = CompatConfig()
#: ``--quick``: one seed, 200 steps (measured on the 2-core host with 2 threads: 110–270 s
#: while other jobs loaded it with five rows; 9.8 min with six under heavy load)
QUICK = CompatConfig(n_train=12000, old_steps=120, new_steps=200)
#: ``make demo``: one seed of the full configuration (the quick one leaves OCA at old/old and BCT far below it;
#: one seed of the full one took ~2.5 min on the quiet 2-core host)
DEMO = FULL


# ----------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------
class ConvTrunk(nn.Module):
    """:class:`orthokit.bench.models.SmallCNN`'s layout up to its embedding: Conv(1→c,5) → ReLU → pool →
    Conv(c→2c,5) → ReLU → pool → Linear(→``feat_dim``), no activation on the embedding."""

    def __init__(self, channels: int, feat_dim: int) -> None:
        super().__init__()
        self.feat_dim = feat_dim
        self.conv1 = nn.Conv2d(1, channels, 5, padding=2)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 5, padding=2)
        self.fc = nn.Linear(2 * channels * 7 * 7, feat_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.view(-1, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


class OldModel(nn.Module):
    """The old model: a :class:`ConvTrunk` and a bias-free linear classifier over the old classes (its rows
    are BCT's prototypes). ``forward`` returns the embedding; ``logits`` the classifier output."""

    def __init__(self, channels: int, feat_dim: int, n_classes: int) -> None:
        super().__init__()
        self.trunk = ConvTrunk(channels, feat_dim)
        self.classifier = nn.Linear(feat_dim, n_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.trunk(x))


# ----------------------------------------------------------------------------------------------------------
# data and training
# ----------------------------------------------------------------------------------------------------------
_DATA_CACHE: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _mnist() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised MNIST ``(xtr [60000,1,28,28], ytr, xte, yte)``, loaded once per process."""
    if "mnist" not in _DATA_CACHE:
        (xtr, ytr), (xte, yte) = load_mnist(flatten=False)
        _DATA_CACHE["mnist"] = ((xtr - MNIST_MEAN) / MNIST_STD, ytr, (xte - MNIST_MEAN) / MNIST_STD, yte)
    return _DATA_CACHE["mnist"]


def _split(cfg: CompatConfig, seed: int) -> dict[str, torch.Tensor]:
    """Per-seed training subset; the query/gallery split of the test images is the same for every seed."""
    xtr, ytr, xte, yte = _mnist()
    if cfg.n_train > len(xtr) or cfg.n_query + cfg.n_gallery > len(xte):
        raise ValueError(
            f"the config needs {cfg.n_train} training and {cfg.n_query + cfg.n_gallery} test images; "
            f"MNIST has {len(xtr)} and {len(xte)}"
        )
    tr = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))[: cfg.n_train]
    te = torch.randperm(len(xte), generator=torch.Generator().manual_seed(12345))
    q, g = te[: cfg.n_query], te[cfg.n_query : cfg.n_query + cfg.n_gallery]
    return {"x": xtr[tr], "y": ytr[tr], "xq": xte[q], "yq": yte[q], "xg": xte[g], "yg": yte[g]}


def _fit(
    params: list[nn.Parameter],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    cfg: CompatConfig,
    seed: int,
) -> float:
    """Adam (lr ``cfg.lr``, cosine decay to 0) on random batches; returns the wall time in seconds."""
    if len(x) == 0:
        raise ValueError("no training images for this model (the subset has none of its classes)")
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (min(cfg.batch_size, len(x)),), generator=g)
        loss = loss_fn(x[idx], y[idx])
        if not torch.isfinite(loss):
            raise RuntimeError(f"training loss became {loss.item()}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - t0


def train_old(cfg: CompatConfig, data: dict[str, torch.Tensor], seed: int) -> tuple[OldModel, float]:
    """The old model trained with cross-entropy on the digits ``< cfg.old_classes``; returned frozen, in eval."""
    torch.manual_seed(seed)
    old = OldModel(cfg.old_channels, cfg.old_dim, cfg.old_classes)
    keep = torch.nonzero(data["y"] < cfg.old_classes).squeeze(1)[: cfg.n_old]
    secs = _fit(
        list(old.parameters()),
        lambda x, y: F.cross_entropy(old.logits(x), y),
        data["x"][keep],
        data["y"][keep],
        cfg.old_steps,
        cfg,
        seed,
    )
    old.eval().requires_grad_(False)
    return old, secs


@torch.no_grad()
def _features(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, chunk: int = 2000) -> torch.Tensor:
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, len(x), chunk)])


def old_prototypes(
    old: OldModel, data: dict[str, torch.Tensor], n_classes: int = 10, use_classifier: bool = True
) -> torch.Tensor:
    """BCT prototypes ``[n_classes, old_dim]`` from :func:`orthokit.align.bct.synthesize_prototypes`: the old
    classifier's rows for the old classes (``use_classifier=False``: normalized old-feature centroids for every
    class, the ml-fct code's pseudo-classifier)."""
    from orthokit.align.bct import synthesize_prototypes

    feats = _features(old, data["x"])
    W = old.classifier.weight.detach() if use_classifier else None
    return synthesize_prototypes(feats, data["y"], W, n_classes)


#: benchmark rows that run a registered method with non-default options:
#: row name -> (``COMPAT_METHODS`` name, constructor options, prototypes from old-feature centroids only).
#: ``bct_mlfct``: BCT as the ml-fct/OCA code trains it (``norm_feature``, pseudo-classifier of class
#: centroids, label smoothing 0.1) — on MNIST it closes plain BCT's top-1 gap (``docs/align/compat.md``).
VARIANTS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "bct_mlfct": ("bct", {"normalize": True, "label_smoothing": 0.1}, True),
}


def _base(name: str) -> str:
    """The ``COMPAT_METHODS`` name behind a benchmark row."""
    return VARIANTS[name][0] if name in VARIANTS else name


#: the modules defining the compatible-training methods (importing one registers it in ``COMPAT_METHODS``)
_METHOD_MODULES = ("independent", "bct", "oca", "bt2", "lambda_compat")


def compat_methods() -> Any:
    """``COMPAT_METHODS`` with every method module of ``orthokit.align`` imported (so all are registered)."""
    import importlib

    from orthokit.align.registry import COMPAT_METHODS

    for mod in _METHOD_MODULES:
        name = f"orthokit.align.{mod}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:  # a method not written yet; any other import error propagates
            if e.name != name:
                raise
    return COMPAT_METHODS


def build_method(
    name: str,
    cfg: CompatConfig,
    old: OldModel,
    prototypes: torch.Tensor | None,
    seed: int,
    independent: nn.Module | None = None,
) -> tuple[nn.Module, int]:
    """The registered method ``name`` (or the :data:`VARIANTS` row ``name``, with its options) around a fresh
    new-model :class:`ConvTrunk`; returns it and the backbone width.

    Extra dimensions (capability ``extra_dims``): a method whose constructor takes ``extra_dims`` (BT²) adds
    them itself on top of an ``old_dim``-wide backbone; any other such method (OCA) gets a backbone of width
    ``old_dim + cfg.extra_dims``. A method taking ``independent_model`` (BT²'s λ₁ term) gets a frozen copy of
    ``independent`` (the seed's independently trained new backbone) when one is given."""
    import copy
    import inspect

    COMPAT_METHODS = compat_methods()
    kw: dict[str, Any] = dict(VARIANTS[name][1]) if name in VARIANTS else {}
    name = _base(name)
    cls = COMPAT_METHODS.get(name)
    params = inspect.signature(cls).parameters
    feat_dim = cfg.old_dim
    if COMPAT_METHODS.capabilities(name).get("extra_dims", False):
        if "extra_dims" in params:
            kw["extra_dims"] = cfg.extra_dims
        else:
            feat_dim = cfg.old_dim + cfg.extra_dims
    if independent is not None and "independent_model" in params:
        kw["independent_model"] = copy.deepcopy(independent).eval().requires_grad_(False)
    torch.manual_seed(1000 + seed)
    backbone = ConvTrunk(cfg.new_channels, feat_dim)
    method = cls(
        backbone,
        feat_dim=feat_dim,
        n_classes=10,
        old_dim=cfg.old_dim,
        old_prototypes=prototypes,
        old_model=old,
        **kw,
    )
    return method, feat_dim


def trainable_parameters(cfg: CompatConfig) -> dict[str, int]:
    """Trainable parameters (``numel`` of every ``requires_grad`` parameter: backbone, classifier and the method's
    own layers; the frozen old / independent models excluded) of each row of ``cfg.methods``, each built exactly
    as :func:`run_seed` builds it for training, without training (the count depends on the architecture only).

    This exposes what ``extra_parameters`` leaves out: a method whose *backbone* is wider (OCA's
    ``old_dim + extra_dims`` trunk) trains more parameters than independent training beyond its extra layers.

    Example:
        >>> cfg = CompatConfig(methods=("independent", "oca"), new_channels=4, old_channels=2, old_dim=8,
        ...                    extra_dims=2)
        >>> n = trainable_parameters(cfg)
        >>> n["independent"]      # conv 1→4 (104) + conv 4→8 (808) + fc 392→8 (3144) + classifier 8·10
        4136
        >>> n["oca"] - n["independent"]   # fc 2 more outputs (786) + classifier (20) + orthogonal 10·10 + 10
        916
    """
    cfg.check()
    old = OldModel(cfg.old_channels, cfg.old_dim, cfg.old_classes)
    protos = F.normalize(torch.randn(10, cfg.old_dim), dim=1)
    independent = ConvTrunk(cfg.new_channels, cfg.old_dim)
    out: dict[str, int] = {}
    for name in cfg.methods:
        method, _ = build_method(name, cfg, old, protos, 0, independent)
        out[name] = sum(p.numel() for p in method.parameters() if p.requires_grad)
    return out


def add_trainable_parameters(res: dict[str, Any]) -> dict[str, Any]:
    """``res`` (a :func:`run` result or its loaded JSON) with ``trainable_parameters`` of every row added
    (:func:`trainable_parameters` of its config); the measured numbers are left as they are."""
    cfg = CompatConfig(**{**res["config"], "methods": tuple(res["config"]["methods"])})
    return {**res, "trainable_parameters": trainable_parameters(cfg)}


def rerender(json_path: str | os.PathLike) -> dict[str, Any]:
    """Re-render a committed ``align_compat*.json`` without re-training: add the trainable-parameter counts
    (:func:`add_trainable_parameters`) and rewrite the JSON and its markdown next to it (atomic writes)."""
    path = Path(json_path)
    res = add_trainable_parameters(json.loads(path.read_text()))
    atomic_write_json(path, res)
    atomic_write_text(path.with_suffix(".md"), markdown(res, png=path.with_suffix(".png").name))
    return res


def _retrieval(
    q: torch.Tensor, g: torch.Tensor, data: dict[str, torch.Tensor], metric: str, old_classes: int
) -> dict[str, float]:
    """top1/top5/mAP over all queries, plus top-1 over the queries of the old classes (``top1_seen``) and
    of the classes only the new model was trained on (``top1_unseen``), against the whole gallery."""
    from orthokit.align.protocol import retrieval_metrics

    r = retrieval_metrics(q, g, data["yq"], data["yg"], metric=metric, topk=(1, 5))
    out = {k: float(r[k]) for k in ("top1", "top5", "mAP")}
    for key, mask in (("top1_seen", data["yq"] < old_classes), ("top1_unseen", data["yq"] >= old_classes)):
        part = retrieval_metrics(q[mask], g, data["yq"][mask], data["yg"], metric=metric, topk=(1,))
        out[key] = float(part["top1"])
    return out


def _report_rows(
    old_q: torch.Tensor,
    old_g: torch.Tensor,
    new_q: torch.Tensor,
    new_g: torch.Tensor,
    comp_q: torch.Tensor,
    data: dict[str, torch.Tensor],
    metric: str,
    old_classes: int,
) -> dict[str, dict[str, float]]:
    """The three settings from :func:`orthokit.align.protocol.compatibility_report` (new/old reads the
    compatible query feature ``comp_q``): top1/top5/mAP over all queries, plus top-1 of the old-class and
    new-class queries (``top1_seen`` / ``top1_unseen``) against the whole gallery."""
    from orthokit.align.protocol import compatibility_report

    yq, yg = data["yq"], data["yg"]

    def report(mask: torch.Tensor | None, topk: tuple[int, ...]) -> dict[str, dict[str, float]]:
        def q(t: torch.Tensor) -> torch.Tensor:
            return t if mask is None else t[mask]

        return compatibility_report(
            {"query": q(old_q), "gallery": old_g},
            {"query": q(new_q), "gallery": new_g, "compatible_query": q(comp_q)},
            labels=(q(yq), yg),
            metric=metric,
            topk=topk,
        ).rows

    full = report(None, (1, 5))
    rows = {st: {k: float(full[st][k]) for k in ("top1", "top5", "mAP")} for st in SETTINGS}
    for key, mask in (("top1_seen", yq < old_classes), ("top1_unseen", yq >= old_classes)):
        part = report(mask, (1,))
        for st in SETTINGS:
            rows[st][key] = float(part[st]["top1"])
    return rows


def run_seed(cfg: CompatConfig, seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """One seed: train the old model and every method, evaluate the three settings; a JSON-able dict."""
    data = _split(cfg, seed)
    old, old_secs = train_old(cfg, data, seed)
    keep = data["yq"] < cfg.old_classes
    old_q, old_g = _features(old, data["xq"]), _features(old, data["xg"])
    old_acc = float((old.classifier(old_q[keep]).argmax(1) == data["yq"][keep]).float().mean())
    old_old = _retrieval(old_q, old_g, data, cfg.metric, cfg.old_classes)
    log(f"seed {seed}: old model {old_secs:.1f} s, old/old top-1 {100 * old_old['top1']:.1f} %")
    COMPAT_METHODS = compat_methods()
    needs = any(COMPAT_METHODS.capabilities(_base(m)).get("needs_old_classifier", True) for m in cfg.methods)
    protos = old_prototypes(old, data) if needs else None
    centroids = (
        old_prototypes(old, data, use_classifier=False)
        if any(VARIANTS.get(m, ("", {}, False))[2] for m in cfg.methods)
        else None
    )
    out: dict[str, Any] = {
        "seed": seed,
        "old": {"train_s": old_secs, "accuracy_seen_classes": old_acc, "old/old": old_old},
        "methods": {},
    }
    independent: nn.Module | None = None
    for name in cfg.methods:
        use = centroids if VARIANTS.get(name, ("", {}, False))[2] else protos
        method, feat_dim = build_method(name, cfg, old, use, seed, independent)
        method.train()
        params = [p for p in method.parameters() if p.requires_grad]
        secs = _fit(params, method.loss, data["x"], data["y"], cfg.new_steps, cfg, seed + 7)
        method.eval()
        if name == "independent":
            independent = getattr(method, "backbone", None)
        new_q, new_g = _features(method.new_features, data["xq"]), _features(method.new_features, data["xg"])
        comp_q = _features(method.compatible_features, data["xq"])
        rows = _report_rows(old_q, old_g, new_q, new_g, comp_q, data, cfg.metric, cfg.old_classes)
        out["methods"][name] = {
            **rows,
            "train_s": secs,
            "extra_parameters": int(method.extra_parameters()),
            "backbone_dim": feat_dim,
            "feat_dim": int(new_q.shape[1]),
            "compatible_dim": int(comp_q.shape[1]),
        }
        log(
            f"seed {seed}: {name:<18} {secs:5.1f} s  new/old {100 * rows['new/old']['top1']:.1f} %  "
            f"new/new {100 * rows['new/new']['top1']:.1f} %"
        )
    return out


def _stat(v: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}


def summarise(seeds: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Mean ± sample std over seeds per (method, setting, metric), train time, extra parameters, verdicts."""
    summ: dict[str, Any] = {}
    for m in methods:
        runs = [s["methods"][m] for s in seeds]
        summ[m] = {st: {k: _stat([r[st][k] for r in runs]) for k in METRIC_KEYS} for st in SETTINGS}
        summ[m]["train_s"] = _stat([r["train_s"] for r in runs])
        summ[m]["extra_parameters"] = runs[0]["extra_parameters"]
        summ[m]["feat_dim"] = runs[0]["feat_dim"]
        for key, suffix in (("top1", ""), ("mAP", "_map")):
            summ[m][f"criterion{suffix}_seeds"] = sum(r["new/old"][key] > r["old/old"][key] for r in runs)
            summ[m][f"criterion{suffix}"] = summ[m]["new/old"][key]["mean"] > summ[m]["old/old"][key]["mean"]
    goals: dict[str, Any] = {
        "criterion": {m: summ[m]["criterion"] for m in methods if m != "independent"},
        "criterion_map": {m: summ[m]["criterion_map"] for m in methods if m != "independent"},
    }
    if "independent" in summ:
        ind = summ["independent"]["new/new"]["top1"]["mean"]
        goals["new_new_vs_independent_pts"] = {
            m: 100 * (summ[m]["new/new"]["top1"]["mean"] - ind) for m in methods if m != "independent"
        }
        goals["oca_or_bt2_within_1pt"] = any(
            goals["new_new_vs_independent_pts"].get(m, -math.inf) >= -1.0 for m in ("oca", "bt2")
        )
    return {"methods": summ, "goals": goals}


def run(
    cfg: CompatConfig = FULL,
    seeds: Sequence[int] = (0, 1, 2),
    out_dir: str | os.PathLike | None = None,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every seed, summarise, and (with ``out_dir``) write ``align_compat{_quick}.{json,md,png}``."""
    cfg.check()
    if not seeds:
        raise ValueError("seeds is empty")
    COMPAT_METHODS = compat_methods()
    for m in cfg.methods:
        COMPAT_METHODS.get(_base(m))  # unknown names fail before any training, with the registry's message
    t0 = time.perf_counter()
    per_seed = [run_seed(cfg, s, log) for s in seeds]
    res: dict[str, Any] = {
        "config": asdict(cfg),
        "seeds": list(seeds),
        "quick": quick,
        "per_seed": per_seed,
        **summarise(per_seed, cfg.methods),
        "wall_s": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
        "machine": machine_info(),
        "machine_line": machine_line(),
        "theirs_cifar100": THEIRS_CIFAR100,
        "trainable_parameters": trainable_parameters(cfg),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = result_stem("align_compat", quick)
        png = out / f"{stem}.png"
        plot(res, png)
        res["files"] = [str(out / f"{stem}.json"), str(out / f"{stem}.md"), str(png)]
        atomic_write_json(out / f"{stem}.json", res)
        atomic_write_text(out / f"{stem}.md", markdown(res, png=png.name))
    return res


# ----------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------
_LABELS = {
    "independent": "independent",
    "bct": "BCT",
    "bct_mlfct": "BCT (ml-fct head)",
    "oca": "OCA",
    "bt2": "BT²",
    "lambda_orthogonal": "λ-orthogonal",
}


def _label(m: str) -> str:
    return _LABELS.get(m, m)


def _pm(s: dict[str, float], n: int) -> str:
    return f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}" if n > 1 else f"{100 * s['mean']:.1f}"


def verdict_lines(res: dict[str, Any]) -> list[str]:
    """The issue's two goals as printed verdicts (nothing is asserted)."""
    summ, goals, n = res["methods"], res["goals"], len(res["seeds"])
    lines = []
    for m, ok in goals["criterion"].items():
        s = summ[m]
        ok_map = s["criterion_map"]
        lines.append(
            f"- {_label(m)}: new/old {_pm(s['new/old']['top1'], n)} vs old/old {_pm(s['old/old']['top1'], n)} "
            f"top-1 → criterion new/old > old/old **{'met' if ok else 'not met'}** "
            f"({s['criterion_seeds']}/{n} seeds); mAP {_pm(s['new/old']['mAP'], n)} vs "
            f"{_pm(s['old/old']['mAP'], n)} → **{'met' if ok_map else 'not met'}** "
            f"({s['criterion_map_seeds']}/{n} seeds)."
        )
    if "new_new_vs_independent_pts" in goals:
        d = goals["new_new_vs_independent_pts"]
        parts = [f"{_label(m)} {d[m]:+.1f} pts" for m in ("oca", "bt2") if m in d]
        if parts:
            lines.append(
                "- new/new top-1 vs independent: "
                + ", ".join(parts)
                + f" → goal 'OCA or BT² within 1 point' **{'met' if goals['oca_or_bt2_within_1pt'] else 'not met'}**."
            )
    return lines


def markdown(res: dict[str, Any], png: str | None = None, level: int = 1) -> str:
    """The result as markdown: setup, measured table, verdicts, the papers' CIFAR-100 anchors."""
    h = "#" * level
    cfg, summ, n = res["config"], res["methods"], len(res["seeds"])
    old_acc = statistics.fmean(s["old"]["accuracy_seen_classes"] for s in res["per_seed"])
    counts = res.get("trainable_parameters") or {}
    base = counts.get("independent")
    with_counts = base is not None and all(m in counts for m in summ)

    def vs_independent(m: str) -> list[str]:
        if not with_counts:
            return []
        if m == "independent":
            return [f"{base:,} (base)"]
        d = counts[m] - base
        return [f"{d:+,} ({100 * d / base:+.0f} %)"]

    head = [
        "method",
        "new dim",
        "extra params",
        *(["trainable params vs independent"] if with_counts else []),
    ]
    head += ["train s"]
    head += (
        [f"{st} top-1 %" for st in SETTINGS]
        + [f"{st} mAP %" for st in SETTINGS]
        + ["new/old > old/old (seeds, top-1 / mAP)"]
    )
    rows = []
    for m, s in summ.items():
        rows.append(
            [
                _label(m),
                s["feat_dim"],
                f"{s['extra_parameters']:,}",
                *vs_independent(m),
                f"{s['train_s']['mean']:.1f}",
                *[_pm(s[st]["top1"], n) for st in SETTINGS],
                *[_pm(s[st]["mAP"], n) for st in SETTINGS],
                f"{s['criterion_seeds']}/{n} / {s['criterion_map_seeds']}/{n}",
            ]
        )
    top5 = [[_label(m), *[_pm(s[st]["top5"], n) for st in SETTINGS]] for m, s in summ.items()]
    groups = [
        [_label(m), *[f"{_pm(s[st]['top1_seen'], n)} / {_pm(s[st]['top1_unseen'], n)}" for st in SETTINGS]]
        for m, s in summ.items()
    ]
    theirs = [
        [_label(m), *[("—" if v[st] is None else f"{v[st]:.1f}") for st in SETTINGS]]
        for m, v in res["theirs_cifar100"].items()
    ]
    lines = [
        f"{h} Backward-compatible training on MNIST (orthokit.align)",
        "",
        f"Old model: CNN {cfg['old_channels']}/{2 * cfg['old_channels']} channels, {cfg['old_dim']}-d embedding, "
        f"trained on digits 0–{cfg['old_classes'] - 1} "
        + (f"({cfg['n_old']} images, " if cfg.get("n_old") else "(")
        + f"{cfg['old_steps']} Adam steps; accuracy on those test digits "
        f"{100 * old_acc:.1f} %). New model: CNN {cfg['new_channels']}/{2 * cfg['new_channels']} channels on all "
        f"10 digits ({cfg['new_steps']} steps, batch {cfg['batch_size']}, lr {cfg['lr']:g} cosine-decayed), "
        f"{cfg['n_train']} training images per seed. Retrieval on the MNIST test split: {cfg['n_query']} queries "
        f"vs a {cfg['n_gallery']}-image gallery, all 10 digits, {cfg['metric']} distance (features truncated to "
        "the smaller width, as in ml-fct). new/old = the new model's compatible query feature against the old "
        f"gallery. Seeds {', '.join(map(str, res['seeds']))}"
        + (" (mean ± sample std)" if n > 1 else "")
        + f"; wall time {res['wall_s'] / 60:.1f} min on {res['threads']} thread(s).",
        "",
        f"Machine: {res['machine_line']}",
        "",
        md_table(head, rows),
        "",
        "Extra params: parameters beyond the new backbone and a plain linear classifier (the methods' own count). "
        + (
            "Trainable params vs independent: all trainable parameters of the method as trained (backbone, "
            "classifier, own layers; counted on the built model) minus independent training's; it includes a "
            "wider backbone, which extra params does not (OCA's trunk emits old dim + extra dims). "
            if with_counts
            else ""
        )
        + "Train s: wall time of the new model's training per seed."
        + (
            " BT² also reads the seed's independently trained new backbone (frozen) in its λ₁ cosine term, as "
            "the reference code does; that model is not counted in its extra params or train time."
            if "bt2" in summ and "independent" in summ
            else ""
        ),
        "",
        f"{h}# Verdicts (printed, not asserted)",
        "",
        *verdict_lines(res),
        "",
        f"{h}# Top-1 % by query class: old classes (0–{cfg['old_classes'] - 1}) / new classes "
        f"({cfg['old_classes']}–9)",
        "",
        "Every query searches the whole gallery; the old model never saw the new classes.",
        "",
        md_table(["method", *SETTINGS], groups),
        "",
        f"{h}# Top-5 (CMC) %",
        "",
        md_table(["method", *SETTINGS], top5),
        "",
        f"{h}# Theirs (CIFAR-100, ResNet-50) — anchor, not measured here",
        "",
        "Top-1 % from the BT² README (50 → 100 classes; BT² extra dims 32). Old/old is shared by all rows.",
        "",
        md_table(["method", *SETTINGS], theirs),
        "",
    ]
    if png:
        lines += [f"![compatibility]({png})", ""]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: str | os.PathLike) -> None:
    """Grouped bars (old/old, new/old, new/new) per method, top-1 and mAP panels, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = res["methods"]
    methods = list(summ)
    colors = {"old/old": "tab:gray", "new/old": "tab:green", "new/new": "tab:blue"}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    w = 0.27
    for ax, key, title in zip(axes, ("top1", "mAP"), ("top-1 (CMC)", "mAP")):
        for j, st in enumerate(SETTINGS):
            xs = [i + (j - 1) * w for i in range(len(methods))]
            means = [100 * summ[m][st][key]["mean"] for m in methods]
            stds = [100 * summ[m][st][key]["std"] for m in methods]
            ax.bar(xs, means, w, yerr=stds, capsize=3, label=st, color=colors[st])
        ax.set_xticks(range(len(methods)), [_label(m) for m in methods])
        ax.set_ylabel(f"{title} %")
        ax.set_ylim(0, 115)
        ax.set_yticks(range(0, 101, 20))
        ax.set_title(f"MNIST retrieval, {title}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper center", ncol=3, fontsize=8)
    n = len(res["seeds"])
    fig.suptitle(
        f"Backward compatibility: old model on digits 0–{res['config']['old_classes'] - 1}, new on 0–9 "
        f"({n} seed{'s' if n > 1 else ''}{', mean ± std' if n > 1 else ''})"
    )
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def demo(out_dir: Path) -> Section:
    """``make demo`` section: the quick configuration (one seed, a few minutes at most on 2 cores) with the table
    and the grouped-bar plot; headline: the compatible methods' new/old top-1 against old/old, anchored by
    independent training's new/old."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    try:
        res = run(DEMO, seeds=(0,), out_dir=out_dir, quick=True, log=lambda s: print(f"[demo align] {s}"))
    finally:
        torch.set_num_threads(threads)
    summ = res["methods"]

    def top1(m: str, st: str) -> float:
        return 100 * summ[m][st]["top1"]["mean"]

    shown = [m for m in ("bct", "oca") if m in summ] or [m for m in summ if m != "independent"][:2]
    oo = top1(shown[0], "old/old") if shown else top1(next(iter(summ)), "old/old")
    met = [m for m in summ if m != "independent" and summ[m]["criterion"]]
    met_map = [m for m in summ if m != "independent" and summ[m]["criterion_map"]]
    n_compat = len(summ) - ("independent" in summ)
    anchor = f"independent new/old {top1('independent', 'new/old'):.1f} %" if "independent" in summ else "—"
    return Section(
        title="Backward-compatible training (orthokit.align)",
        family="align (compat)",
        metric="MNIST retrieval top-1, new query vs old gallery (new/old) vs old/old",
        ours=", ".join(f"{_label(m)} {top1(m, 'new/old'):.1f} %" for m in shown) + f" (old/old {oo:.1f} %)",
        anchor=anchor,
        verdict=f"new/old > old/old: top-1 {len(met)}/{n_compat}, mAP {len(met_map)}/{n_compat} compatible methods",
        intro="An old CNN trained on digits 0–4 embeds the gallery; a bigger new CNN is trained on all ten "
        "digits, independently or with a backward-compatible method, and its query features are matched "
        "against the old gallery without re-embedding it (new/old). BCT's criterion is new/old > old/old. "
        f"One seed of the full configuration ({DEMO.new_steps} training steps); 3-seed runs: "
        "`orthokit bench align --out DIR`.",
        figures=("align_compat_quick.png",),
        body=markdown(res, level=3),
    )


def main(argv: list[str] | None = None) -> int:
    """``orthokit bench align`` / ``python benchmarks/align_compat.py``."""
    from orthokit.bench.report import add_out_argument, announce

    ap = argparse.ArgumentParser(prog="orthokit bench align", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 200 training steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2; quick: 0)")
    ap.add_argument(
        "--methods", nargs="+", default=None, help="COMPAT_METHODS or VARIANTS names (default: all)"
    )
    ap.add_argument("--n-train", type=int, default=None, help="training images per seed")
    ap.add_argument("--n-old", type=int, default=None, help="training images of the old model (default: all)")
    ap.add_argument("--old-steps", type=int, default=None, help="old-model training steps")
    ap.add_argument("--new-steps", type=int, default=None, help="new-model training steps per method")
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate of both models")
    ap.add_argument("--n-query", type=int, default=None, help="query images")
    ap.add_argument("--n-gallery", type=int, default=None, help="gallery images")
    ap.add_argument("--metric", choices=("cosine", "l2"), default=None, help="retrieval distance")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: as set, e.g. by OMP_NUM_THREADS; 1 is faster on a busy 2-core host)",
    )
    add_out_argument(ap)
    args = ap.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    over = {
        k: getattr(args, k)
        for k in ("n_train", "n_old", "old_steps", "new_steps", "lr", "n_query", "n_gallery", "metric")
        if getattr(args, k) is not None
    }
    if args.methods is not None:
        over["methods"] = tuple(args.methods)
    cfg = replace(cfg, **over)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    try:
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        cfg.check()
        for m in cfg.methods:
            compat_methods().get(_base(m))
    except ValueError as e:
        ap.error(str(e))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"[align] machine: {machine_line()}", flush=True)
    res = run(
        cfg, seeds=seeds, out_dir=args.out, quick=args.quick, log=lambda s: print(f"[align] {s}", flush=True)
    )
    print(markdown(res))
    announce(res["files"], "align")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

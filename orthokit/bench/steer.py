"""Steering a char-level transformers Llama toward Shakespeare: success vs fluency for every registered method.

Protocol (one run, every method on the same model, prompts, sampling noise and classifier):

* **Model.** :mod:`orthokit.bench.hf_char` — a ``LlamaForCausalLM`` (hidden 128, 4 blocks) trained here on
  alternating Tiny Shakespeare / WikiText-2 batches (cached under ``<out>/cache``). ``--quick``: the tiny one.
* **Direction.** Per block ``ℓ``, the difference of means ``r_ℓ = μ_ℓ(Shakespeare) − μ_ℓ(WikiText)`` of the block's
  output over all positions of held-out windows (:func:`orthokit.steer.directions.mean_difference`). Angular
  Steering's plane is :func:`orthokit.steer.angular.steering_plane` of these per-layer candidates (the reference's
  construction). Selective Steering is calibrated by :func:`orthokit.steer.selective.plan_selective` (last token, as
  the reference): its plane **and** its discriminative sites (the class means' cosines with that same ``b₁`` have
  opposite signs) come from one plan. ``selective`` is the reference configuration (sites = the blocks'
  normalization outputs); ``selective@block`` calibrates, selects and rotates the residual stream at the block
  outputs instead. When no site is discriminative the method steers nothing and its row reports the unsteered
  result, flagged ("no discriminative layer").
* **Prompts and sampling.** WikiText validation windows (32 chars) as prompts; continuations of ``gen_len`` chars
  sampled at temperature 0.8 with a KV cache, the same seed for every method and strength (identical noise).
* **Success.** A logistic regression on char 1–3-gram TF-IDF (scikit-learn), trained on windows of the two
  corpora's training splits (its held-out accuracy is reported), labels each continuation; success = share
  labelled Shakespeare.
* **Fluency.** Mean NLL (nats/char) of the continuation under the *unsteered* model given the prompt (lower is
  better); distinct-4 (share of distinct char 4-grams) shows degenerate repetition.
* **Norm drift.** Per block, ``mean ‖h_steered‖ / ‖h‖ − 1`` over the prompt positions (teacher forced).
* **Strength grids.** ``addition`` / ``cylindrical``: ``α = k · ‖r_ℓ‖``; ``angular``: target angle θ (0° = fully
  along ``b₁``) with the registered default (adaptive: only states with ``⟨h, b₁⟩ > 0`` are rotated) and
  ``angular@all`` the non-adaptive option; ``selective``/``selective@block``: rotation by θ; ``ablation``: one point
  (no strength). Single-layer methods act on block ``L // 2``.
* **Ablation equivalence.** :func:`orthokit.steer.ablation.orthogonalize_weights` vs the
  :func:`~orthokit.steer.ablation.ablate` hooks on the trained model: max ``|Δ logits|``.
* **Steerable vs decodable.** Per block: success of activation addition at that block (``α = 4 ‖r_ℓ‖``) vs the
  logit-lens and tuned-lens decodability (:func:`orthokit.steer.lens.decodability`, AUROC of the Shakespeare-typical
  characters) of ``r_ℓ`` — the dissociation Nadaf 2026 (arXiv 2604.02608) reports for function vectors.

Reproduce: ``OMP_NUM_THREADS=1 python benchmarks/steer.py [--out DIR]`` or ``--quick`` (``*_quick.*``).
Results: ``steer{,_quick}.{md,json,png}``.

Example:
    >>> from orthokit.bench.steer import distinct_n, nll_at
    >>> distinct_n("to be or not to be", 4)              # share of distinct char 4-grams
    0.8
    >>> pts = [{"success": 0.1, "nll": 1.5}, {"success": 0.4, "nll": 2.0}, {"success": 0.8, "nll": 3.0}]
    >>> nll_at(pts, 0.6)                                  # fluency on the frontier where success reaches 0.6
    2.5
"""

from __future__ import annotations

import argparse
import importlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from orthokit.bench import hf_char
from orthokit.bench.data import get_batch
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

__all__ = ["Config", "FULL", "QUICK", "DEMO", "run", "markdown", "demo", "main"]

TARGET, OTHER = "tinyshakespeare", "wikitext2_valid"
#: rows that are named options of a registered method (not registry names): ``<method>@<option>``
VARIANTS = ("angular@all", "selective@block")
#: the row of a Selective configuration whose calibration found no discriminative site (nothing is steered)
NO_SITE = "no discriminative layer"
_CACHE_KW = (
    "cache"
    if "cache"
    in __import__("inspect").signature(__import__("transformers").LlamaForCausalLM.forward).parameters
    else "past_key_values"
)


@dataclass(frozen=True)
class Config:
    """Benchmark sizes (the full run and ``--quick`` differ only here)."""

    n_cal: int = 64  # calibration windows per corpus (directions, plane, layer selection)
    cal_len: int = 64
    n_prompts: int = 48
    prompt_len: int = 32
    gen_len: int = 48
    temperature: float = 0.8
    seeds: tuple[int, ...] = (0, 1)
    clf_windows: int = 3000
    lens_steps: int = 150
    lens_batch: int = 8
    add_grid: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
    angle_grid: tuple[float, ...] = (90.0, 60.0, 45.0, 30.0, 15.0, 0.0)
    rotate_grid: tuple[float, ...] = (
        -150.0,
        -120.0,
        -90.0,
        -60.0,
        -30.0,
        30.0,
        60.0,
        90.0,
        120.0,
        150.0,
        180.0,
    )
    layer_sweep_k: float = 4.0
    cyl_penalty: float = 0.5


FULL = Config()
QUICK = Config(
    n_cal=12,
    cal_len=32,
    n_prompts=8,
    prompt_len=16,
    gen_len=12,
    seeds=(0,),
    clf_windows=400,
    lens_steps=10,
    add_grid=(1.0, 4.0),
    angle_grid=(60.0, 0.0),
    rotate_grid=(90.0, 180.0),
)

#: the ``make demo`` grid (with :data:`orthokit.bench.hf_char.DEMO`): one seed, a few strengths per method
DEMO = Config(
    n_cal=24,
    n_prompts=16,
    gen_len=24,
    seeds=(0,),
    clf_windows=600,
    lens_steps=20,
    add_grid=(2.0, 4.0, 6.0),
    angle_grid=(45.0, 0.0),
    rotate_grid=(30.0, 120.0),
)


# ----------------------------------------------------------------------------------------------- data & classifier


def _windows(data: Tensor, n: int, length: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    ix = torch.randint(len(data) - length - 1, (n,), generator=g)
    return torch.stack([data[i : i + length] for i in ix.tolist()])


def train_classifier(lm: hf_char.CharLM, cfg: Config) -> tuple[Any, float]:
    """Char 1–3-gram TF-IDF + logistic regression: Shakespeare (1) vs WikiText (0); returns (pipeline, val acc)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    def texts(name: str, split: str, n: int, seed: int) -> list[str]:
        c = lm.corpus(name)
        return [lm.decode(w) for w in _windows(getattr(c, split), n, cfg.gen_len, seed)]

    x_tr = texts(TARGET, "train", cfg.clf_windows, 1) + texts(OTHER, "train", cfg.clf_windows, 2)
    y_tr = [1] * cfg.clf_windows + [0] * cfg.clf_windows
    n_val = max(50, cfg.clf_windows // 4)
    x_va = texts(TARGET, "val", n_val, 3) + texts(OTHER, "val", n_val, 4)
    y_va = [1] * n_val + [0] * n_val
    clf = make_pipeline(
        TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2),
        LogisticRegression(max_iter=2000, C=4.0),
    )
    clf.fit(x_tr, y_tr)
    return clf, float(clf.score(x_va, y_va))


def target_chars(lm: hf_char.CharLM, top: int = 12, min_count: int = 200) -> list[int]:
    """Token ids of the characters most typical of Shakespeare vs WikiText (largest log frequency ratio)."""
    a = torch.bincount(lm.corpus(TARGET).train, minlength=len(lm.chars)).double()
    b = torch.bincount(lm.corpus(OTHER).train, minlength=len(lm.chars)).double()
    ratio = torch.log((a + 1) / a.sum()) - torch.log((b + 1) / b.sum())
    ratio[(a + b) < min_count] = -math.inf
    return [int(i) for i in torch.topk(ratio, top).indices]


# ----------------------------------------------------------------------------------------------- generation & metrics


def _cache_of(out: Any) -> Any:
    """The KV cache of a model output (transformers 5: ``.cache``; 4.x: ``.past_key_values``)."""
    return getattr(out, "cache", None) if hasattr(out, "cache") else getattr(out, "past_key_values", None)


@torch.no_grad()
def generate(model: Any, prompts: Tensor, n_new: int, temperature: float, seed: int) -> Tensor:
    """Sample ``n_new`` tokens after each prompt with a KV cache (active steering hooks apply); ``[B, n_new]``."""
    g = torch.Generator().manual_seed(seed)
    out = model(input_ids=prompts, use_cache=True)
    cache, logits = _cache_of(out), out.logits[:, -1]
    new = []
    for _ in range(n_new):
        probs = F.softmax(logits.float() / temperature, -1)
        nxt = torch.multinomial(probs, 1, generator=g)
        new.append(nxt)
        out = model(input_ids=nxt, **{_CACHE_KW: cache}, use_cache=True)
        cache, logits = _cache_of(out), out.logits[:, -1]
    return torch.cat(new, 1)


@torch.no_grad()
def continuation_nll(model: Any, prompts: Tensor, cont: Tensor) -> Tensor:
    """Per-sequence mean NLL (nats/char) of ``cont`` given ``prompts`` under ``model`` (call it unsteered)."""
    ids = torch.cat([prompts, cont], 1)
    logits = model(input_ids=ids).logits[:, prompts.shape[1] - 1 : -1].float()
    return F.cross_entropy(logits.transpose(1, 2), cont, reduction="none").mean(1)


def distinct_n(text: str, n: int = 4) -> float:
    grams = [text[i : i + n] for i in range(len(text) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


# ----------------------------------------------------------------------------------------------- methods


@dataclass
class Context:
    """Everything the method builders need (per-layer directions, Angular's plane, Selective's plans)."""

    model: Any
    r: Tensor  # [L, d] mean differences per block
    r_norm: Tensor  # [L]
    b1: Tensor
    b2: Tensor
    layer: int  # the block single-layer methods act on
    plans: dict[str, Any]  # "selective" (norm sites, the reference) / "selective@block" -> SelectivePlan
    prompt_mean: Tensor  # [L, d] mean state of the prompts (cylindrical's per-sample difference)
    target_mean: Tensor  # [L, d] mean state of the target corpus
    cfg: Config


def steered_layers(name: str, ctx: Context) -> list[int]:
    """The blocks a method's hooks act in (ablation: every residual write, reported as all blocks; Selective at
    normalization sites: the blocks holding the selected sites; empty when nothing is steered)."""
    if name in ctx.plans:
        plan = ctx.plans[name]
        if plan.sites == "block":
            return list(plan.layers)
        blocks = [int(n.split(":")[0].split()[1]) for n in plan.site_names]
        return sorted({blocks[i] for i in plan.layers})
    if name == "ablation":
        return list(range(ctx.r.shape[0]))
    return [ctx.layer]


def steered_sites(name: str, ctx: Context) -> str:
    """Where a method edits: ``"block"`` (residual stream at block outputs), ``"norm"`` (normalization outputs)
    or ``"writes"`` (ablation: every residual write)."""
    if name in ctx.plans:
        return str(ctx.plans[name].sites)
    return "writes" if name == "ablation" else "block"


def selection_summary(name: str, ctx: Context) -> dict[str, Any]:
    """What Selective's calibration chose: sites, how many of how many, their names, ``b₁``'s site."""
    plan = ctx.plans[name]
    return {
        "sites": plan.sites,
        "selected": len(plan.layers),
        "of": len(plan.site_names),
        "names": [plan.site_names[i] for i in plan.layers],
        "feature_site": plan.site_names[plan.feature_layer],
        "alignment": plan.alignment.tolist(),
    }


def norm_violations(res: dict[str, Any], tol: float = 1e-5) -> list[str]:
    """Norm-preserving methods (registry capability of ``<method>`` in ``<method>[@option]``) editing the residual
    stream at block outputs whose first steered block changed the states' mean norm."""
    from orthokit.steer.registry import STEERERS

    bad = []
    for name, pts in res["methods"].items():
        base = name.split("@")[0]
        if base not in STEERERS or not STEERERS.capabilities(base).get("norm_preserving"):
            continue
        if res["method_sites"].get(name) != "block" or not res["method_layers"].get(name):
            continue  # normalization-site rows edit norm outputs, not the residual stream; nothing steered
        first = res["method_layers"][name][0]
        bad += [
            f"{name}@{p['strength']:g}: drift {p['drift'][first]:.2e}"
            for p in pts
            if abs(p["drift"][first]) > tol
        ]
    return bad


def _grid(name: str, ctx: Context) -> list[tuple[float, Callable[[], Any]]]:
    """(strength, register-hooks) pairs for one registered method; empty when no grid is defined."""
    from orthokit.steer._hooks import steer
    from orthokit.steer.registry import STEERERS

    cls = STEERERS.get(name.split("@")[0])
    lay, cfg = ctx.layer, ctx.cfg
    if name == "addition":
        return [
            (k, lambda k=k: steer(ctx.model, cls(ctx.r[lay], alpha=k * float(ctx.r_norm[lay])), layers=[lay]))
            for k in cfg.add_grid
        ]
    if name == "ablation":
        from orthokit.steer.ablation import ablate

        # Arditi et al.: project the style direction out of every residual write (a control: removes, not adds)
        return [(1.0, lambda: ablate(ctx.model, ctx.r[lay]))]
    if name in ("angular", "angular@all"):
        kw = {} if name == "angular" else {"adaptive": False}  # the registered default, then the named option
        return [
            (a, lambda a=a: steer(ctx.model, cls(ctx.b1, ctx.b2, angle_deg=a, **kw), layers=[lay]))
            for a in cfg.angle_grid
        ]
    if name in ("selective", "selective@block") and name in ctx.plans:
        from orthokit.steer.selective import steer_norm_sites

        plan = ctx.plans[name]  # one plan: its own plane (b1, b2) and the sites that same b1 selected
        if not plan.layers:
            return []
        if plan.sites == "norm":
            return [
                (
                    a,
                    lambda a=a: steer_norm_sites(
                        ctx.model, cls(plan.b1, plan.b2, angle_deg=a), sites=plan.layers
                    ),
                )
                for a in cfg.rotate_grid
            ]
        return [
            (a, lambda a=a: steer(ctx.model, cls(plan.b1, plan.b2, angle_deg=a), layers=plan.layers))
            for a in cfg.rotate_grid
        ]
    if name == "cylindrical":
        # CRH: axis = the concept's mean difference; the sample difference δ = μ_target − (mean prompt state), so
        # θ = ∠(δ, axis) and the normal part moves the prompts toward the target cloud (penalty p shrinks it)
        axis, delta = ctx.r[lay], ctx.target_mean[lay] - ctx.prompt_mean[lay]
        return [
            (
                k,
                lambda k=k: steer(
                    ctx.model,
                    cls(axis, diff=delta, length=k * float(ctx.r_norm[lay]), penalty=cfg.cyl_penalty),
                    layers=[lay],
                ),
            )
            for k in cfg.add_grid
        ]
    return []


def _norm_drift(model: Any, prompts: Tensor, make: Callable[[], Any], base: Tensor) -> list[float]:
    """Per block: mean ``‖h_steered‖ / ‖h‖ − 1`` over the prompt positions (teacher forced)."""
    from orthokit.steer.lens import residual_states

    with make():
        hs = residual_states(model, prompts)[1:]
    ratio = hs.float().norm(dim=-1) / base.float().norm(dim=-1).clamp_min(1e-12)
    return [float(x) for x in (ratio.mean(dim=(1, 2)) - 1)]


def evaluate(
    model: Any,
    lm: hf_char.CharLM,
    clf: Any,
    prompts: Tensor,
    cfg: Config,
    make: Callable[[], Any] | None,
    base_states: Tensor,
) -> dict[str, Any]:
    """Generate under the hooks ``make()`` registers (None: unsteered) and score success / fluency / drift."""
    succ, nll, dist = [], [], []
    samples: list[str] = []
    for seed in cfg.seeds:
        if make is None:
            cont = generate(model, prompts, cfg.gen_len, cfg.temperature, seed)
        else:
            with make():
                cont = generate(model, prompts, cfg.gen_len, cfg.temperature, seed)
        texts = [lm.decode(c) for c in cont]
        succ += [float(p) for p in clf.predict(texts)]
        nll += continuation_nll(model, prompts, cont).tolist()
        dist += [distinct_n(t) for t in texts]
        if seed == cfg.seeds[0]:
            samples = texts[:2]
    drift = [0.0] * base_states.shape[0] if make is None else _norm_drift(model, prompts, make, base_states)
    n = len(succ)
    p = sum(succ) / n
    return {
        "success": p,
        "success_se": math.sqrt(max(p * (1 - p), 1e-12) / n),
        "nll": sum(nll) / n,
        "distinct4": sum(dist) / n,
        "drift": drift,
        "max_abs_drift": max(abs(x) for x in drift),
        "samples": samples,
    }


def ablation_equivalence(model: Any, direction: Tensor, ids: Tensor) -> float:
    """Max |Δ logits| between :func:`orthogonalize_weights` (a deep copy) and the :func:`ablate` hooks."""
    from orthokit.steer.ablation import ablate, orthogonalize_weights

    with torch.no_grad():
        with ablate(model, direction):
            hooked = model(input_ids=ids).logits
        edited = orthogonalize_weights(model, direction, inplace=False)(input_ids=ids).logits
    return float((hooked - edited).abs().max())


def steerable_vs_decodable(
    model: Any,
    lm: hf_char.CharLM,
    clf: Any,
    prompts: Tensor,
    cfg: Config,
    ctx: Context,
    base_states: Tensor,
    cal_other: Tensor,
) -> list[dict[str, Any]]:
    """Per block: addition success at that block vs logit-/tuned-lens decodability of ``r_ℓ``."""
    from orthokit.steer._hooks import steer
    from orthokit.steer.addition import ActivationAddition
    from orthokit.steer.lens import TunedLens, decodability, residual_states

    lens = TunedLens(model)
    train = torch.cat([lm.corpus(TARGET).train, lm.corpus(OTHER).train])
    g = torch.Generator().manual_seed(7)
    batches = [
        get_batch(train, cfg.lens_batch, min(64, lm.config.context), generator=g)[0]
        for _ in range(cfg.lens_steps)
    ]
    hist = lens.fit(batches)
    held = _windows(lm.corpus(OTHER).val, 8, min(64, lm.config.context), 11)
    kl_logit = lens.kl_to_final(held, tuned=False).tolist()
    kl_tuned = lens.kl_to_final(held).tolist()
    targets = target_chars(lm)
    states = residual_states(model, cal_other)
    rows = []
    for lay in range(ctx.r.shape[0]):
        alpha = cfg.layer_sweep_k * float(ctx.r_norm[lay])
        res = evaluate(
            model,
            lm,
            clf,
            prompts,
            cfg,
            lambda lay=lay, alpha=alpha: steer(
                model, ActivationAddition(ctx.r[lay], alpha=alpha), layers=[lay]
            ),
            base_states,
        )
        shift = alpha * ctx.r[lay] / ctx.r_norm[lay]
        rows.append(
            {
                "layer": lay,
                "success": res["success"],
                "nll": res["nll"],
                "logit_lens": decodability(ctx.r[lay], model, lay, targets),
                "tuned_lens": decodability(ctx.r[lay], model, lay, targets, lens=lens),
                "logit_lens_shift": decodability(shift, model, lay, targets, states=states[lay + 1]),
                "tuned_lens_shift": decodability(
                    shift, model, lay, targets, lens=lens, states=states[lay + 1]
                ),
                "kl_logit_lens": kl_logit[lay + 1] if lay + 1 < len(kl_logit) else 0.0,
                "kl_tuned_lens": kl_tuned[lay + 1] if lay + 1 < len(kl_tuned) else 0.0,
            }
        )
    return [{"lens_train_kl_first": hist[0], "lens_train_kl_last": hist[-1], "targets": targets}, *rows]


def matched(points: list[dict[str, Any]], level: float) -> dict[str, Any] | None:
    """The lowest-NLL grid point whose success reaches ``level`` (None if none does)."""
    ok = [p for p in points if p["success"] >= level]
    return min(ok, key=lambda p: p["nll"]) if ok else None


def _frontier(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Points sorted by NLL, keeping those whose success beats every more fluent point (the Pareto frontier)."""
    front: list[dict[str, Any]] = []
    for p in sorted(points, key=lambda q: q["nll"]):
        if not front or p["success"] > front[-1]["success"]:
            front.append(p)
    return front


def nll_at(points: list[dict[str, Any]], level: float) -> float | None:
    """NLL where the success-vs-NLL frontier first reaches ``level``, linearly interpolated between the two
    frontier points that bracket it (frontier: the points sorted by NLL, keeping only those whose success beats
    every cheaper point). None when no point reaches ``level``."""
    front = _frontier(points)
    for i, p in enumerate(front):
        if p["success"] >= level:
            if i == 0:
                return float(p["nll"])
            q = front[i - 1]
            t = (level - q["success"]) / (p["success"] - q["success"])
            return float(q["nll"] + t * (p["nll"] - q["nll"]))
    return None


# ----------------------------------------------------------------------------------------------- run


def run(
    out_dir: str | Path | None = None,
    *,
    quick: bool = False,
    cfg: Config | None = None,
    model_cfg: hf_char.HFCharConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark; writes ``steer{,_quick}.{md,json,png}`` into ``out_dir`` when given (the model cache
    goes under ``out_dir/cache``; without ``out_dir`` a temporary folder holds it)."""
    import tempfile

    import orthokit.steer  # noqa: F401
    from orthokit.steer import ablation, addition  # noqa: F401  (register)
    from orthokit.steer.directions import mean_difference
    from orthokit.steer.lens import residual_states
    from orthokit.steer.registry import STEERERS

    fv_present = True
    for mod in ("angular", "selective", "cylindrical", "function_vectors"):
        try:
            importlib.import_module(f"orthokit.steer.{mod}")
        except ImportError as e:  # a method file not there yet: it is simply not in the registry
            log(f"[steer] orthokit.steer.{mod} not importable ({e}); skipped")
            fv_present = fv_present and mod != "function_vectors"
    cfg = cfg if cfg is not None else (QUICK if quick else FULL)
    model_cfg = model_cfg if model_cfg is not None else (hf_char.QUICK if quick else hf_char.FULL)
    t0 = time.perf_counter()
    cache_root = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="orthokit_steer_"))
    lm = hf_char.load_or_train(cache_root, model_cfg, log=log)
    model = lm.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    n_layers = model.config.num_hidden_layers
    clf, clf_acc = train_classifier(lm, cfg)
    log(f"[steer] classifier held-out accuracy {clf_acc:.3f}")

    cal_t = _windows(lm.corpus(TARGET).val, cfg.n_cal, cfg.cal_len, 21)
    cal_o = _windows(lm.corpus(OTHER).val, cfg.n_cal, cfg.cal_len, 22)
    hs_t = residual_states(model, cal_t)[1:].flatten(1, 2)  # [L, N, d]
    hs_o = residual_states(model, cal_o)[1:].flatten(1, 2)
    r = mean_difference(hs_t, hs_o).float()
    prompts = _windows(lm.corpus(OTHER).val, cfg.n_prompts, cfg.prompt_len, 23)
    base_states = residual_states(model, prompts)[1:]
    b1, b2 = r[n_layers // 2], r[0]
    plans: dict[str, Any] = {}
    try:
        from orthokit.steer.angular import steering_plane
        from orthokit.steer.selective import plan_selective

        plane = steering_plane(r)
        b1, b2 = plane.b1.float(), plane.b2.float()
        # Selective: one calibration per configuration gives both its plane and its sites (the reference's rule)
        plans["selective"] = plan_selective(model, cal_t, cal_o, sites="norm")
        plans["selective@block"] = plan_selective(model, cal_t, cal_o, sites="block")
    except ImportError as e:
        log(f"[steer] angular/selective modules absent ({e})")
    ctx = Context(
        model=model,
        r=r,
        r_norm=r.norm(dim=-1),
        b1=b1,
        b2=b2,
        layer=n_layers // 2,
        plans=plans,
        prompt_mean=base_states.float().mean(dim=(1, 2)),
        target_mean=hs_t.float().mean(1),
        cfg=cfg,
    )
    baseline = evaluate(model, lm, clf, prompts, cfg, None, base_states)
    log(f"[steer] unsteered: success {baseline['success']:.3f}  nll {baseline['nll']:.3f}")
    methods: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    names = list(STEERERS.names()) + [v for v in VARIANTS if v.split("@")[0] in STEERERS]
    for name in names:
        grid = _grid(name, ctx)
        if (
            not grid and name in plans
        ):  # no discriminative site: nothing is steered, the result is the baseline
            methods[name] = [{**baseline, "strength": 0.0, "note": NO_SITE}]
            log(f"[steer] {name:12s}: {NO_SITE} (unsteered result reported)")
            continue
        if not grid:
            skipped[name] = "no strength grid defined for this method in the benchmark"
            continue
        pts = []
        for strength, make in grid:
            res = evaluate(model, lm, clf, prompts, cfg, make, base_states)
            res["strength"] = strength
            pts.append(res)
            log(
                f"[steer] {name:15s} strength {strength:6.2f}: success {res['success']:.3f}  nll {res['nll']:.3f}  "
                f"distinct4 {res['distinct4']:.3f}  max|drift| {res['max_abs_drift']:.3f}"
            )
        methods[name] = pts
    if fv_present:
        skipped["function_vector"] = (
            "not included: a function vector (Todd et al.) needs an in-context task with answer tokens; corpus "
            "style has none, so the mean-difference direction is the only direction used"
        )
    eq = ablation_equivalence(model, r[n_layers // 2], prompts[: min(8, len(prompts))])
    log(f"[steer] orthogonalize_weights vs ablate hooks: max |Δ logits| {eq:.2e}")
    svd = steerable_vs_decodable(model, lm, clf, prompts, cfg, ctx, base_states, cal_o)
    best_add = max((p["success"] for p in methods.get("addition", [])), default=0.0)
    level = 0.5 if best_add >= 0.5 else 0.9 * best_add
    res: dict[str, Any] = {
        "quick": quick,
        "norm_check": [],
        "config": asdict(cfg),
        "model": {**lm.info, "path": str(lm.path) if lm.path else None},
        "classifier_val_acc": clf_acc,
        "steer_layer": ctx.layer,
        "selection": {n: selection_summary(n, ctx) for n in plans},
        "r_norm": ctx.r_norm.tolist(),
        "baseline": baseline,
        "methods": methods,
        "skipped": skipped,
        "method_layers": {n: steered_layers(n, ctx) for n in methods},
        "method_sites": {n: steered_sites(n, ctx) for n in methods},
        "matched_level": level,
        # a Selective row without a discriminative site steered nothing: it never counts as reaching a level
        "matched": {m: matched([q for q in p if not q.get("note")], level) for m, p in methods.items()},
        "nll_at_level": {m: nll_at([q for q in p if not q.get("note")], level) for m, p in methods.items()},
        "ablation_max_abs_diff": eq,
        "lens": svd[0],
        "layers": svd[1:],
        "wall_s": time.perf_counter() - t0,
        "machine": machine_info(),
        "machine_line": machine_line(),
    }
    res["norm_check"] = norm_violations(res)
    if out_dir is not None:
        from orthokit.bench.report import results_dir

        out = results_dir(out_dir)
        stem = result_stem("steer", quick)
        res["png"] = f"{stem}.png"
        _plot(res, out / f"{stem}.png")
        atomic_write_json(out / f"{stem}.json", res)
        atomic_write_text(out / f"{stem}.md", markdown(res))
        res["files"] = [str(out / f"{stem}.{e}") for e in ("md", "json", "png")]
    return res


_MARK = {
    "addition": "o",
    "ablation": "x",
    "angular": "s",
    "angular@all": "P",
    "selective": "D",
    "selective@block": "d",
    "cylindrical": "^",
}


def selection_text(res: dict[str, Any], name: str) -> str:
    """``"k of n <sites> selected (…)"`` for a Selective row, ``""`` for the others."""
    sel = res.get("selection", {}).get(name)
    if sel is None:
        return ""
    kind = "normalization sites" if sel["sites"] == "norm" else "blocks"
    if not sel["selected"]:
        return f"0 of {sel['of']} {kind} selected: {NO_SITE}, unsteered"
    return f"{sel['selected']} of {sel['of']} {kind} selected"


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    b = res["baseline"]
    ax.scatter([b["nll"]], [b["success"]], c="k", marker="*", s=80, label="unsteered", zorder=3)
    for m, pts in res["methods"].items():
        sc = ax.scatter(
            [p["nll"] for p in pts], [p["success"] for p in pts], marker=_MARK.get(m, "."), label=m
        )
        front = _frontier(pts)
        ax.plot([p["nll"] for p in front], [p["success"] for p in front], c=sc.get_facecolor()[0], lw=1)
    ax.set_xlabel("fluency: NLL under the unsteered model (nats/char, lower = better)")
    ax.set_ylabel("success (classifier: Shakespeare)")
    ax.set_title("success vs fluency (lines: Pareto frontiers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    for m, pts in res["methods"].items():
        best = res["matched"].get(m) or max(pts, key=lambda p: p["success"])
        ax.plot(
            range(len(best["drift"])),
            best["drift"],
            marker=_MARK.get(m, "."),
            label=f"{m} ({best['strength']:g})",
        )
    ax.set_xlabel("block")
    ax.set_ylabel("mean ‖h_steered‖/‖h‖ − 1")
    ax.set_title("activation-norm drift (matched-success point)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[2]
    lays = [row["layer"] for row in res["layers"]]
    ax.plot(lays, [row["success"] for row in res["layers"]], marker="o", label="steering success (addition)")
    ax.plot(lays, [row["logit_lens"]["auroc"] for row in res["layers"]], marker="s", label="logit-lens AUROC")
    ax.plot(lays, [row["tuned_lens"]["auroc"] for row in res["layers"]], marker="D", label="tuned-lens AUROC")
    ax.axhline(0.5, c="gray", lw=0.8, ls="--")
    ax.set_xlabel("block")
    ax.set_title("steerable vs decodable (r_ℓ)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def _f(x: float, nd: int = 3) -> str:
    return f"{x:.{nd}f}"


def _where(res: dict[str, Any], name: str) -> str:
    """Where a method steered, for the tables: selected sites for Selective, the block(s) otherwise."""
    if name in res.get("selection", {}):
        return selection_text(res, name)
    site = res.get("method_sites", {}).get(name, "block")
    lays = res["method_layers"].get(name, [])
    if site == "writes":
        return "every residual write"
    return ("block " if len(lays) == 1 else "blocks ") + ", ".join(str(i) for i in lays)


def markdown(res: dict[str, Any], level: int = 1) -> str:
    """The report: model, classifier, per-method sweep, matched-success table, drift, ablation check, lens table."""
    h = "#" * level
    m = res["model"]
    b = res["baseline"]
    lines = [
        f"{h} Steering a char-level Llama toward Shakespeare{' (quick)' if res['quick'] else ''}",
        "",
        f"Machine: {res['machine_line']}. Wall time {res['wall_s']:.0f} s"
        + (" (model loaded from cache)" if m.get("cached") else f" (model training {m['train_s']:.0f} s)")
        + ".",
        "",
        f"Model: LlamaForCausalLM, {m['params']:,} parameters, {m['steps']} steps; held-out loss "
        + ", ".join(f"{k} {v:.3f}" for k, v in m["val_loss"].items())
        + f" nats/char. Classifier held-out accuracy {res['classifier_val_acc']:.3f}. Steered block (single-layer "
        f"methods): {res['steer_layer']}"
        + "".join(
            f"; `{n}`: {selection_text(res, n)} (b₁ from {sel['feature_site']})"
            for n, sel in res.get("selection", {}).items()
        )
        + ". ‖r_ℓ‖ per block: "
        + ", ".join(_f(x, 2) for x in res["r_norm"])
        + ".",
        "",
        f"Unsteered (WikiText prompts): success {_f(b['success'])}, NLL {_f(b['nll'])}, distinct-4 "
        f"{_f(b['distinct4'])}.",
        "",
        f"{h}# Sweep (strength: addition/cylindrical k in α = k‖r‖; angular target angle °; selective rotation °)",
        "",
        "`selective`: the reference configuration (plane and sites from one last-token calibration at the outputs "
        "of the blocks' normalization modules); `selective@block`: the same at the residual stream after each block "
        "(orthokit's option); `angular`: the registered default (adaptive: only states with ⟨h, b₁⟩ > 0 rotate); "
        f"`angular@all`: every state rotated. A row marked '{NO_SITE}' steered nothing (unsteered result).",
        "",
    ]
    rows = []
    for name, pts in res["methods"].items():
        for p in pts:
            rows.append(
                [
                    name + (f" ({p['note']})" if p.get("note") else ""),
                    f"{p['strength']:g}",
                    f"{_f(p['success'])} ± {_f(p['success_se'])}",
                    _f(p["nll"]),
                    _f(p["distinct4"]),
                    _f(p["max_abs_drift"]),
                ]
            )
    lines += [md_table(["method", "strength", "success", "NLL", "distinct-4", "max |norm drift|"], rows), ""]
    lv = res["matched_level"]
    lines += [f"{h}# At matched success (first grid point with success ≥ {lv:.2f}, lowest NLL)", ""]
    rows = []
    for name, p in res["matched"].items():
        where = _where(res, name)
        if p is None:
            best = max(res["methods"][name], key=lambda q: q["success"])
            rows.append(
                [name, where, "not reached", f"best {_f(best['success'])} at {best['strength']:g}", "", ""]
            )
        else:
            rows.append(
                [
                    name,
                    where,
                    f"{p['strength']:g}",
                    _f(p["success"]),
                    f"{_f(p['nll'])} ({p['nll'] - b['nll']:+.3f})",
                    " ".join(f"{x:+.3f}" for x in p["drift"]),
                ]
            )
    lines += [
        md_table(
            ["method", "steered", "strength", "success", "NLL (Δ vs unsteered)", "norm drift per block"], rows
        ),
        "",
        f"Frontier NLL interpolated at success = {lv:.2f} (lower = more fluent at equal success): "
        + ", ".join(
            f"{n} {_f(v)}" if v is not None else f"{n} not reached" for n, v in res["nll_at_level"].items()
        )
        + ".",
        "",
    ]
    if res["skipped"]:
        lines += [
            "Not in the sweep: " + "; ".join(f"`{k}` — {v}" for k, v in res["skipped"].items()) + ".",
            "",
        ]
    lines += [
        f"{h}# Ablation: weight orthogonalization vs hooks",
        "",
        f"`orthogonalize_weights` vs `ablate` on this trained model (direction r at block {res['steer_layer']}): "
        f"max |Δ logits| = {res['ablation_max_abs_diff']:.2e} (goal ≤ 1e-5: "
        f"{'met' if res['ablation_max_abs_diff'] <= 1e-5 else 'NOT met'}). Norm preservation at the first steered "
        "block of the norm-preserving methods: "
        + (
            "exact to 1e-5 at every strength."
            if not res["norm_check"]
            else "VIOLATED: " + "; ".join(res["norm_check"])
        ),
        "",
        f"{h}# Steerable vs decodable (per block: addition at α = {res['config']['layer_sweep_k']:g}‖r_ℓ‖)",
        "",
        f"Tuned lens trained {res['config']['lens_steps']} steps (per-layer KL {res['lens']['lens_train_kl_first']:.3f}"
        f" → {res['lens']['lens_train_kl_last']:.3f}). Decodability = AUROC of the {len(res['lens']['targets'])} most"
        " Shakespeare-typical characters in the lens read-out of r_ℓ (0.5 = chance); 'shift' = the mean logit change"
        " r_ℓ causes on WikiText states.",
        "",
    ]
    rows = [
        [
            r["layer"],
            _f(r["success"]),
            _f(r["logit_lens"]["auroc"]),
            _f(r["tuned_lens"]["auroc"]),
            _f(r["logit_lens_shift"]["auroc"]),
            _f(r["tuned_lens_shift"]["auroc"]),
            f"{r['kl_logit_lens']:.3f} / {r['kl_tuned_lens']:.3f}",
        ]
        for r in res["layers"]
    ]
    lines += [
        md_table(
            [
                "block",
                "steering success",
                "logit lens",
                "tuned lens",
                "logit lens (shift)",
                "tuned lens (shift)",
                "KL to final: logit / tuned",
            ],
            rows,
        ),
        "",
        f"{h}# Samples (seed {res['config']['seeds'][0]}, first prompt)",
        "",
    ]
    for name, p in [("unsteered", b)] + [
        (n, res["matched"][n] or pts[-1]) for n, pts in res["methods"].items()
    ]:
        lines.append(f"- **{name}**: `{p['samples'][0]!r}`" if p["samples"] else f"- {name}: (none)")
    return "\n".join(lines) + "\n"


def demo(out_dir: Path) -> Section:
    """``make demo`` section: a 3-block char Llama (:data:`orthokit.bench.hf_char.DEMO`, cached under
    ``out_dir/cache``) and a small grid; files are written as ``steer_quick.*``. Headline: the most fluent point of
    the registered rotations (``selective`` at the reference's sites, ``angular`` adaptive) reaching the success
    activation addition reaches at its middle strength, and how many sites Selective's calibration selected."""
    res = run(out_dir, quick=True, cfg=DEMO, model_cfg=hf_char.DEMO, log=lambda s: None)
    add = res["methods"].get("addition", [])
    ref = add[len(add) // 2] if add else res["baseline"]
    rot = [
        p
        for n in ("selective", "angular")
        if n in res["methods"]
        for p in res["methods"][n]
        if not p.get("note")  # a Selective row without a discriminative site steered nothing
    ]
    ok = [p for p in rot if p["success"] >= ref["success"] - 0.05]
    best = (
        min(ok, key=lambda p: p["nll"])
        if ok
        else max(rot, key=lambda p: p["success"], default=res["baseline"])
    )
    name = next((n for n in ("selective", "angular") if best in res["methods"].get(n, [])), "rotation")
    return Section(
        title="Activation steering of a char-level Llama (transformers) toward Shakespeare",
        family="steer",
        metric="success / NLL (nats/char), 3-block model",
        ours=f"{name} {_f(best['success'], 2)} / {_f(best['nll'], 2)}",
        anchor=f"addition {_f(ref['success'], 2)} / {_f(ref['nll'], 2)}",
        verdict=(
            f"{'more' if best['nll'] < ref['nll'] else 'less'} fluent at "
            + ("≈ equal" if abs(best["success"] - ref["success"]) <= 0.05 else "higher")
            + " success (one seed, 16 prompts: noisy; the full run is the measurement)"
            if ok
            else "rotation below addition's success"
        )
        + (
            f"; selective: {selection_text(res, 'selective')}"
            if "selective" in res.get("selection", {})
            else ""
        )
        + f"; ablation weights≡hooks {res['ablation_max_abs_diff']:.0e}",
        body=markdown(res, level=2),
        intro="Every registered steering method on the same model, prompts and sampling noise; success by a "
        "char n-gram classifier, fluency as NLL under the unsteered model (full run: benchmarks/results/steer.md).",
        figures=(res["png"],),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="orthokit bench steer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model and grid (results written as *_quick.*)")
    from orthokit.bench.report import add_out_argument, announce

    add_out_argument(ap)
    args = ap.parse_args(argv)
    res = run(args.out, quick=args.quick)
    print(markdown(res))
    announce(res["files"], "orthokit bench steer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""MBAT vector-symbolic encoding of JSON: orthogonal (Haar, structured Hadamard) vs Gaussian binding matrices.

Four measurements, side by side in one run (Gallant, arXiv 2202.04771; Gallant & Okaywe 2013):

1. **Norm over nesting depth.** ``v_0`` a unit atom, ``v_n = M_{k_n} v_{n-1}`` (a JSON object nested ``n`` deep,
   a new key per level), ``n = 1..20``, ``d = 512``; ``‖v_n‖`` mean ± std over seeds, and the cosine between the
   leaf recovered by unbinding all ``n`` levels and the true leaf (``Mᵀ`` for every binder).
2. **Path-query decoding accuracy vs d** (128 … 2048) on generated user/order records (fixed-seed generator:
   name, e-mail, age, tier, active flag, shipping and billing addresses, tags, 1–3 orders with id/sku/qty/price;
   ~22 leaves each): the fraction of leaf paths whose decoded value is right (strings/literals exact; a number
   counts when within ``0.05·(1+|x|)`` — the soft number code is approximate by design).
3. **kNN retrieval of near-duplicates** at ``d = 1024``: families of 5 near-identical records (variants differ from
   the family's first record by one edit: a changed value, two orders swapped, shipping and billing swapped, or
   the tags reversed); each record is queried after one perturbation (one value changed / object keys
   reordered / one top-level key dropped) and must retrieve itself among all records (cosine): recall@1, @10,
   ties broken at random (expected recall; a baseline that cannot tell two records apart gets no credit for it).
   Baseline: **bag of keys** — signed feature hashing of ``key:value`` tokens (last key name, value as text)
   into the same ``d``, cosine.
4. **Bind time per vector** (batch of 64, float32, one thread) at ``d = 256 … 4096``: interleaved rounds,
   ratio of medians against the dense Haar binder (the anchor); the one-off matrix set-up time per role too.

Reproduce: ``OMP_NUM_THREADS=1 python benchmarks/vsa.py [--out DIR]`` or ``--quick`` (smaller sizes, written as
``vsa_quick.*``). Results: ``vsa{,_quick}.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
    time_interleaved,
)
from orthokit.vsa.binding import ensure_registered, make_binder
from orthokit.vsa.json_codec import JSONEncoder
from orthokit.vsa.ops import Codebook

__all__ = ["Config", "FULL", "QUICK", "generate_records", "bag_of_keys", "run", "markdown", "demo", "main"]

BINDER_NAMES = ("haar", "hadamard", "gaussian")


@dataclass(frozen=True)
class Config:
    """Sizes of one run."""

    depth_d: int = 512
    depth_max: int = 20
    depth_seeds: int = 5
    acc_dims: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    acc_records: int = 20
    knn_d: int = 1024
    knn_families: int = 30
    time_dims: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    time_batch: int = 64
    time_rounds: int = 7


FULL = Config()
QUICK = Config(
    depth_d=256,
    depth_max=12,
    depth_seeds=2,
    acc_dims=(128, 256, 512),
    acc_records=6,
    knn_d=512,
    knn_families=8,
    time_dims=(256, 512, 1024),
    time_rounds=3,
)

# --- realistic records -----------------------------------------------------------------------------------
_FIRST = "ada bob cyd dana eli fay gil hana ivan jo kai lea max nia oto pia quin rosa sam tia".split()
_LAST = "adams baker chen diaz evans fox garcia hall ito jones khan lopez meyer ng ortiz patel reyes silva".split()
_CITIES = "london paris rome oslo lima quito kyoto pune accra perth bern riga cork nice porto".split()
_STREETS = "main high oak elm park mill church station bridge market king queen".split()
_DOMAINS = ["mail.com", "post.org", "inbox.net", "corp.io"]
_TIERS = ["free", "pro", "team", "enterprise"]
_TAGS = "vip new churn-risk promo b2b eu newsletter beta referral wholesale".split()
_SKUS = [f"SKU-{i:04d}" for i in range(0, 400, 7)]


def _address(rng: random.Random) -> dict[str, Any]:
    return {"city": rng.choice(_CITIES), "zip": rng.randint(10000, 99999), "street": rng.choice(_STREETS)}


def generate_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` user records with nested addresses, tags and 1–3 orders (fixed-seed, realistic field types).

    Example:
        >>> r = generate_records(2, seed=0)[0]
        >>> sorted(r)[:4], isinstance(r["orders"], list)
        (['active', 'age', 'billing', 'email'], True)
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        out.append(
            {
                "user_id": rng.randint(1000, 99999),
                "name": f"{first} {last}",
                "email": f"{first}.{last}{rng.randint(1, 99)}@{rng.choice(_DOMAINS)}",
                "age": rng.randint(18, 85),
                "tier": rng.choice(_TIERS),
                "active": rng.random() < 0.7,
                "shipping": _address(rng),
                "billing": _address(rng),
                "tags": rng.sample(_TAGS, rng.randint(1, 3)),
                "orders": [
                    {
                        "order_id": rng.randint(100000, 999999),
                        "sku": rng.choice(_SKUS),
                        "qty": rng.randint(1, 5),
                        "price": round(rng.uniform(2.0, 500.0), 2),
                    }
                    for _ in range(rng.randint(1, 3))
                ],
            }
        )
    return out


def _leaves(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict) and obj:
        return [pl for k, v in obj.items() for pl in _leaves(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(obj, list) and obj:
        return [pl for j, v in enumerate(obj) for pl in _leaves(v, f"{prefix}[{j}]")]
    return [(prefix, obj)]


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _correct(got: Any, want: Any) -> bool:
    if _is_num(want):
        return _is_num(got) and abs(float(got) - float(want)) <= 0.05 * (1.0 + abs(float(want)))
    return type(got) is type(want) and got == want


def bag_of_keys(obj: Any, d: int) -> Tensor:
    """Baseline: signed feature hashing of ``key:value`` tokens (the leaf's last key — an array element takes
    its array's key; the value as text) into ``d`` dims — order- and nesting-blind.

    Example:
        >>> v = bag_of_keys({"a": 1, "b": {"a": 1}}, 64)
        >>> float(v.norm() ** 2)  # the token "a:1" twice, hashed to the same signed slot
        4.0
    """
    v = torch.zeros(d, dtype=torch.float64)
    for path, val in _leaves(obj):
        last = path.rsplit(".", 1)[-1]
        key = last.split("[", 1)[0] or "[]"  # array elements are keyed by their array's name
        h = hashlib.blake2b(f"{key}:{val!r}".encode(), digest_size=8).digest()
        idx = int.from_bytes(h[:4], "little") % d
        v[idx] += 1.0 if h[4] & 1 else -1.0
    return v


# --- 1. norm over depth -----------------------------------------------------------------------------------
def _depth_norms(cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in BINDER_NAMES:
        norms = torch.zeros(cfg.depth_seeds, cfg.depth_max, dtype=torch.float64)
        cos = torch.zeros_like(norms)
        for s in range(cfg.depth_seeds):
            b = make_binder(name, cfg.depth_d, seed=100 + s)
            leaf = Codebook(cfg.depth_d, seed=s, dtype=torch.float64).atom("leaf")
            v = leaf
            for n in range(cfg.depth_max):
                v = b.bind(f"key:k{n}", v)
                norms[s, n] = v.norm()
                back = v
                for m in reversed(range(n + 1)):
                    back = b.unbind(f"key:k{m}", back)
                cos[s, n] = torch.dot(back, leaf) / back.norm()
        out[name] = {
            "norm_mean": norms.mean(0).tolist(),
            "norm_std": norms.std(0).tolist() if cfg.depth_seeds > 1 else [0.0] * cfg.depth_max,
            "abs_log_norm_max": float(norms.log().abs().max()),
            "unbind_cos_mean": cos.mean(0).tolist(),
        }
        log(
            f"[vsa] depth {name}: |‖v‖-1| at depth {cfg.depth_max} = "
            f"{abs(out[name]['norm_mean'][-1] - 1):.2e} ± {out[name]['norm_std'][-1]:.2e}, "
            f"unbind cos {out[name]['unbind_cos_mean'][-1]:.4f}"
        )
    return out


# --- 2. accuracy vs d ---------------------------------------------------------------------------------------
def _accuracy(cfg: Config, log: Callable[[str], None]) -> list[dict[str, Any]]:
    recs = generate_records(cfg.acc_records, seed=7)
    rows = []
    for d in cfg.acc_dims:
        for name in BINDER_NAMES:
            t0 = time.perf_counter()
            enc = JSONEncoder(d, name, seed=1)
            vecs = enc.encode_many(recs)
            ok_str: list[bool] = []
            ok_num: list[bool] = []
            rel_err: list[float] = []
            for v, r in zip(vecs, recs):
                for p, want in _leaves(r):
                    got = enc.decode_path(v, p, min_cosine=-1.0)  # best guess: accuracy, no noise floor
                    (ok_num if _is_num(want) else ok_str).append(_correct(got, want))
                    if _is_num(want) and _is_num(got):
                        rel_err.append(abs(float(got) - float(want)) / (1.0 + abs(float(want))))
            allok = ok_str + ok_num
            row = {
                "d": d,
                "binder": name,
                "accuracy": sum(allok) / len(allok),
                "acc_symbols": sum(ok_str) / max(len(ok_str), 1),
                "acc_numbers": sum(ok_num) / max(len(ok_num), 1),
                "num_rel_err_median": statistics.median(rel_err) if rel_err else float("nan"),
                "paths": len(allok),
                "seconds": time.perf_counter() - t0,
            }
            rows.append(row)
            log(
                f"[vsa] acc d={d} {name}: {row['accuracy']:.3f} ({row['paths']} paths, {row['seconds']:.1f}s)"
            )
    return rows


# --- 3. near-duplicate retrieval ----------------------------------------------------------------------------
def _edit_value(r: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    r = copy.deepcopy(r)
    field = rng.choice(["age", "tier", "active", "shipping.city", "billing.zip", "orders.qty"])
    if field == "age":
        r["age"] = r["age"] + rng.choice([-7, 7])
    elif field == "tier":
        r["tier"] = rng.choice([t for t in _TIERS if t != r["tier"]])
    elif field == "active":
        r["active"] = not r["active"]
    elif field == "shipping.city":
        r["shipping"]["city"] = rng.choice([c for c in _CITIES if c != r["shipping"]["city"]])
    elif field == "billing.zip":
        r["billing"]["zip"] = rng.randint(10000, 99999)
    else:
        r["orders"][0]["qty"] = r["orders"][0]["qty"] % 5 + 1
    return r


def _variant(base: dict[str, Any], kind: str, rng: random.Random) -> dict[str, Any]:
    r = copy.deepcopy(base)
    if kind == "swap_orders" and len(r["orders"]) > 1:
        r["orders"][0], r["orders"][1] = r["orders"][1], r["orders"][0]
    elif kind == "swap_addresses":
        r["shipping"], r["billing"] = r["billing"], r["shipping"]
    elif kind == "reverse_tags" and len(r["tags"]) > 1:
        r["tags"] = r["tags"][::-1]
    else:
        r = _edit_value(r, rng)
    return r


def _reorder(obj: Any, rng: random.Random) -> Any:
    if isinstance(obj, dict):
        keys = list(obj)
        rng.shuffle(keys)
        return {k: _reorder(obj[k], rng) for k in keys}
    if isinstance(obj, list):
        return [_reorder(x, rng) for x in obj]
    return obj


def _perturb(r: dict[str, Any], kind: str, rng: random.Random) -> dict[str, Any]:
    if kind == "field":
        return _edit_value(r, rng)
    if kind == "reorder":
        return _reorder(r, rng)
    out = copy.deepcopy(r)
    del out[rng.choice(["email", "age", "tier", "tags", "active"])]
    return out


def _knn(cfg: Config, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rng = random.Random(11)
    protos = generate_records(cfg.knn_families, seed=13)
    for p in protos:  # every family can show every structural edit
        if len(p["orders"]) < 2:
            p["orders"].append(
                {"order_id": rng.randint(100000, 999999), "sku": rng.choice(_SKUS), "qty": 1, "price": 9.99}
            )
        if len(p["tags"]) < 2:
            p["tags"].append(rng.choice([t for t in _TAGS if t not in p["tags"]]))
    kinds = ["swap_orders", "swap_addresses", "reverse_tags", "value"]
    db = [rec for p in protos for rec in [p] + [_variant(p, k, rng) for k in kinds]]
    rows = []
    perturbations = ("field", "reorder", "drop")
    queries = {k: [_perturb(r, k, rng) for r in db] for k in perturbations}
    encoders: dict[str, Callable[[Any], Tensor]] = {}
    for name in BINDER_NAMES:
        enc = JSONEncoder(cfg.knn_d, name, seed=3)
        encoders[name] = enc.encode
    encoders["bag_of_keys"] = lambda o: bag_of_keys(o, cfg.knn_d).float()
    for method, f in encoders.items():
        dbv = torch.stack([f(r) for r in db]).double()
        dbv = dbv / dbv.norm(dim=-1, keepdim=True)
        for kind in perturbations:
            q = torch.stack([f(r) for r in queries[kind]]).double()
            q = q / q.norm(dim=-1, keepdim=True)
            sims = q @ dbv.T
            true = sims.diagonal().unsqueeze(1)
            closer = (sims > true + 1e-9).sum(1).double()  # records strictly closer than the true one
            ties = ((sims - true).abs() <= 1e-9).sum(1).double() - 1  # indistinguishable from it (not itself)
            # expected recall@k under random tie-breaking: rank = closer + U{0..ties}
            rows.append(
                {
                    "method": method,
                    "perturbation": kind,
                    "recall@1": float(((1 - closer) / (ties + 1)).clamp(0, 1).mean()),
                    "recall@10": float(((10 - closer) / (ties + 1)).clamp(0, 1).mean()),
                    "n_db": len(db),
                }
            )
        log(
            f"[vsa] knn {method}: "
            + ", ".join(f"{r['perturbation']} R@1={r['recall@1']:.2f}" for r in rows[-3:])
        )
    return rows


# --- 4. timing ---------------------------------------------------------------------------------------------
def _timing(cfg: Config, log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    for d in cfg.time_dims:
        binders = {}
        setup = {}
        for name in BINDER_NAMES:
            b = make_binder(name, d, seed=0)
            t0 = time.perf_counter()
            b.bind("r", torch.zeros(1, d))  # builds and caches the role's matrix / signs
            setup[name] = time.perf_counter() - t0
            binders[name] = b
        x = torch.randn(cfg.time_batch, d, generator=torch.Generator().manual_seed(0))
        reps = max(1, int(2**22 // (d * d)) + 1)

        def make(b: Any, x: Tensor = x, reps: int = reps) -> Callable[[], Any]:
            def f() -> None:
                for _ in range(reps):
                    b.bind("r", x)

            return f

        med, ratio = time_interleaved(
            {n: make(b) for n, b in binders.items()}, rounds=cfg.time_rounds, warmup=1, anchor="haar"
        )
        for name in BINDER_NAMES:
            rows.append(
                {
                    "d": d,
                    "binder": name,
                    "us_per_vector": med[name] / (reps * cfg.time_batch) * 1e6,
                    "ratio_to_haar": ratio[name],
                    "ratio_of_medians": med[name] / med["haar"],
                    "setup_s_per_role": setup[name],
                }
            )
        log(
            f"[vsa] time d={d}: "
            + ", ".join(
                f"{r['binder']} {r['us_per_vector']:.2f}µs ({r['ratio_to_haar']:.2f}x)" for r in rows[-3:]
            )
        )
    return rows


# --- driver ----------------------------------------------------------------------------------------------
def run(
    out_dir: str | Path | None = None,
    *,
    quick: bool = False,
    cfg: Config | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the four measurements; writes ``vsa{,_quick}.{md,json,png}`` into ``out_dir`` when given."""
    ensure_registered()
    cfg = cfg if cfg is not None else (QUICK if quick else FULL)
    t0 = time.perf_counter()
    log(f"[vsa] {machine_line()}")
    res: dict[str, Any] = {
        "quick": quick,
        "config": asdict(cfg),
        "machine": machine_info(),
        "machine_line": machine_line(),
        "depth": _depth_norms(cfg, log),
        "accuracy": _accuracy(cfg, log),
        "knn": _knn(cfg, log),
        "timing": _timing(cfg, log),
    }
    res["seconds"] = time.perf_counter() - t0
    if out_dir is not None:
        out = Path(out_dir)
        stem = result_stem("vsa", quick)
        atomic_write_json(out / f"{stem}.json", res)
        atomic_write_text(out / f"{stem}.md", markdown(res))
        _plot(res, out / f"{stem}.png")
        res["files"] = [str(out / f"{stem}.{e}") for e in ("md", "json", "png")]
    return res


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(20, 4.2))
    for name, r in res["depth"].items():
        n = range(1, len(r["norm_mean"]) + 1)
        m, s = r["norm_mean"], r["norm_std"]
        ax[0].plot(n, m, marker="o", ms=3, label=name)
        ax[0].fill_between(n, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.2)
    ax[0].set(
        xlabel="nesting depth",
        ylabel="‖v‖ (leaf atom ‖·‖ = 1)",
        title=f"norm over depth, d={res['config']['depth_d']}",
    )
    ax[0].legend()
    for name in BINDER_NAMES:
        rows = [r for r in res["accuracy"] if r["binder"] == name]
        ax[1].plot([r["d"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=name)
    ax[1].set(xscale="log", xlabel="d", ylabel="path decoding accuracy", title="JSON path queries")
    dims = res["config"]["acc_dims"]
    ax[1].set_xticks(dims, [str(d) for d in dims])
    ax[1].xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax[1].legend()
    methods = list(dict.fromkeys(r["method"] for r in res["knn"]))
    perts = list(dict.fromkeys(r["perturbation"] for r in res["knn"]))
    w = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = [
            next(r["recall@1"] for r in res["knn"] if r["method"] == m and r["perturbation"] == p)
            for p in perts
        ]
        ax[2].bar([j + i * w for j in range(len(perts))], vals, width=w, label=m)
    ax[2].set_xticks([j + 0.4 - w / 2 for j in range(len(perts))], perts)
    ax[2].set(ylabel="recall@1", title="near-duplicate retrieval")
    ax[2].legend(fontsize=8)
    for name in BINDER_NAMES:
        rows = [r for r in res["timing"] if r["binder"] == name]
        ax[3].plot([r["d"] for r in rows], [r["us_per_vector"] for r in rows], marker="o", label=name)
    ax[3].set(
        xscale="log", yscale="log", xlabel="d", ylabel="µs per bound vector", title="bind time (1 thread)"
    )
    tdims = res["config"]["time_dims"]
    ax[3].set_xticks(tdims, [str(d) for d in tdims])
    ax[3].xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax[3].legend()
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def markdown(res: dict[str, Any], level: int = 1) -> str:
    """The results page: the four tables, protocol and machine line."""
    h = "#" * level
    cfg = res["config"]
    L = [
        f"{h} MBAT JSON encoding: orthogonal vs Gaussian binding{' (quick)' if res['quick'] else ''}",
        "",
        f"Machine: {res['machine_line']}. Wall time {res['seconds']:.0f} s.",
        "",
        f"{h}# 1. Norm over nesting depth (d = {cfg['depth_d']}, {cfg['depth_seeds']} seeds)",
        "",
        "`v_n = M_{k_n} ⋯ M_{k_1} · atom` (one new key per level). Unbind cosine: cos(leaf recovered with "
        "`M_{k_1}ᵀ ⋯ M_{k_n}ᵀ`, true leaf).",
        "",
    ]
    depth_idx = sorted({0, 4, 9, cfg["depth_max"] - 1} & set(range(cfg["depth_max"])))
    hdr = ["binder"] + [f"‖v‖ depth {i + 1}" for i in depth_idx] + [f"unbind cos depth {cfg['depth_max']}"]
    rows = []
    for name, r in res["depth"].items():
        rows.append(
            [name]
            + [f"{r['norm_mean'][i]:.6f} ± {r['norm_std'][i]:.1e}" for i in depth_idx]
            + [f"{r['unbind_cos_mean'][-1]:.6f}"]
        )
    L += [md_table(hdr, rows), ""]
    L += [
        f"{h}# 2. Path-query decoding accuracy vs d ({cfg['acc_records']} generated user/order records)",
        "",
        "Strings/literals must match exactly; numbers count within 0.05·(1+|x|). `num err`: median |x̂−x|/(1+|x|).",
        "",
    ]
    rows = [
        [
            r["d"],
            r["binder"],
            _fmt(r["accuracy"]),
            _fmt(r["acc_symbols"]),
            _fmt(r["acc_numbers"]),
            f"{r['num_rel_err_median']:.4f}",
            r["paths"],
        ]
        for r in res["accuracy"]
    ]
    L += [md_table(["d", "binder", "accuracy", "symbols", "numbers", "num err", "paths"], rows), ""]
    n_db = res["knn"][0]["n_db"]
    L += [
        f"{h}# 3. Near-duplicate retrieval (d = {cfg['knn_d']}, {n_db} records in {cfg['knn_families']} families of 5)",
        "",
        "Variants in a family differ by one edit (a value, two orders swapped, shipping↔billing, tags reversed); "
        "each record is queried after one perturbation and must find itself (ties broken at random: expected "
        "recall). `bag_of_keys`: hashed `key:value` tokens, no order or nesting.",
        "",
    ]
    rows = [[r["method"], r["perturbation"], _fmt(r["recall@1"]), _fmt(r["recall@10"])] for r in res["knn"]]
    L += [md_table(["method", "perturbation", "recall@1", "recall@10"], rows), ""]
    L += [
        f"{h}# 4. Bind time (batch {cfg['time_batch']}, float32, {cfg['time_rounds']} interleaved rounds; anchor: haar)",
        "",
    ]
    haar_us = {r["d"]: r["us_per_vector"] for r in res["timing"] if r["binder"] == "haar"}
    rows = [
        [
            r["d"],
            r["binder"],
            f"{r['us_per_vector']:.2f}",
            f"{r['us_per_vector'] / haar_us[r['d']]:.2f}",
            f"{r['ratio_to_haar']:.2f}",
            f"{r['setup_s_per_role']:.3f}",
        ]
        for r in res["timing"]
    ]
    L += [
        md_table(
            [
                "d",
                "binder",
                "µs / vector",
                "÷ haar (ratio of medians)",
                "÷ haar (median per-round ratio)",
                "set-up s / role",
            ],
            rows,
        ),
        "",
    ]
    return "\n".join(L) + "\n"


def demo(out_dir: Path) -> Section:
    """``make demo`` section: the quick configuration (files ``vsa_quick.*``); headline: norm drift at depth."""
    res = run(out_dir, quick=True)
    dep = res["depth"]
    n = res["config"]["depth_max"]
    ours = max(abs(dep[b]["norm_mean"][-1] - 1) + dep[b]["norm_std"][-1] for b in ("haar", "hadamard"))
    anchor = abs(dep["gaussian"]["norm_mean"][-1] - 1) + dep["gaussian"]["norm_std"][-1]
    acc = {(r["d"], r["binder"]): r["accuracy"] for r in res["accuracy"]}
    dmax = max(res["config"]["acc_dims"])
    return Section(
        title="MBAT vector-symbolic JSON encoding (orthogonal vs Gaussian binding)",
        family="vsa",
        metric=f"norm drift |‖v‖−1|+std after {n} nested bindings (d={res['config']['depth_d']})",
        ours=f"{ours:.1e} (haar/hadamard)",
        anchor=f"{anchor:.3f} (gaussian)",
        verdict="orthogonal binding keeps norms exactly" if ours < 1e-4 < anchor else "see body",
        body=markdown(res, level=3),
        intro=(
            f"JSON records as one vector: path decoding accuracy at d={dmax} is "
            f"{acc[(dmax, 'hadamard')]:.2f} (hadamard, O(d log d)) vs {acc[(dmax, 'gaussian')]:.2f} (gaussian)."
        ),
        figures=(Path(res["files"][2]).name,),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="orthokit bench vsa", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (results written as vsa_quick.*)")
    from orthokit.bench.report import add_out_argument, announce, results_dir

    add_out_argument(ap)
    args = ap.parse_args(argv)
    out = results_dir(args.out)
    res = run(out, quick=args.quick)
    announce(res["files"], "orthokit bench vsa")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

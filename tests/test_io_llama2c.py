"""orthokit.io.llama2c: llama2.c v0 checkpoints -> LlamaForCausalLM, checked against run.c's forward written here.

The reference below re-implements llama2.c's ``run.c`` ``forward`` (legacy v0 format) directly from the raw file:
its own header/offset parsing (numpy, not the loader's), RMSNorm eps 1e-5, RoPE on interleaved pairs (2i, 2i+1)
of each head with frequency 10000^(-(2i)/head_size), causal softmax attention with GQA (query head h reads kv head
h // (n_heads / n_kv_heads)), SwiGLU w2(silu(w1 x) * w3 x), the final RMSNorm and the classifier.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import orthokit.io.llama2c as l2c
from orthokit.bench.data import data_dir
from orthokit.io.llama2c import (
    Llama2cHeader,
    load_llama2c,
    read_llama2c,
    read_llama2c_embeddings,
    read_llama2c_header,
    write_llama2c,
)

STORIES = data_dir() / "models" / "stories260K.bin"


# ---------------------------------------------------------------------------------------- independent reference
def _raw_weights(path: Path) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """run.c's ``memory_map_weights``, by hand: header ints and float64 arrays at their byte offsets."""
    raw = path.read_bytes()
    dim, hidden, L, nh, nkv, vocab, seq = struct.unpack("<7i", raw[:28])
    cfg = dict(dim=dim, hidden=hidden, L=L, nh=nh, nkv=nkv, vocab=abs(vocab), seq=seq)
    f = np.frombuffer(raw, dtype="<f4", offset=28).astype(np.float64)
    hs, V = dim // nh, abs(vocab)
    sizes = [
        ("emb", V * dim),
        ("rms_att", L * dim),
        ("wq", L * dim * dim),
        ("wk", L * dim * nkv * hs),
        ("wv", L * dim * nkv * hs),
        ("wo", L * dim * dim),
        ("rms_ffn", L * dim),
        ("w1", L * dim * hidden),
        ("w2", L * hidden * dim),
        ("w3", L * dim * hidden),
        ("rms_final", dim),
        ("skip", seq * hs),  # freq_cis_real + freq_cis_imag
    ]
    w, o = {}, 0
    for name, n in sizes:
        w[name] = f[o : o + n]
        o += n
    w["wcls"] = w["emb"] if vocab > 0 else f[o : o + V * dim]
    return cfg, w


def _run_c_forward(cfg: dict[str, int], w: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """Logits [T, vocab] of run.c's forward(), called once per position with a growing KV cache (float64)."""
    dim, hidden, L, nh, nkv, V = (cfg[k] for k in ("dim", "hidden", "L", "nh", "nkv", "vocab"))
    hs = dim // nh
    kvd = nkv * hs
    mul = nh // nkv
    emb = w["emb"].reshape(V, dim)
    wq, wk = w["wq"].reshape(L, dim, dim), w["wk"].reshape(L, kvd, dim)
    wv, wo = w["wv"].reshape(L, kvd, dim), w["wo"].reshape(L, dim, dim)
    w1, w2, w3 = (
        w["w1"].reshape(L, hidden, dim),
        w["w2"].reshape(L, dim, hidden),
        w["w3"].reshape(L, hidden, dim),
    )
    ra, rf = w["rms_att"].reshape(L, dim), w["rms_ffn"].reshape(L, dim)
    wcls = w["wcls"].reshape(V, dim)

    def rmsnorm(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return g * (x / np.sqrt(np.mean(x * x) + 1e-5))

    kc = np.zeros((L, len(tokens), kvd))
    vc = np.zeros((L, len(tokens), kvd))
    out = []
    for pos, tok in enumerate(tokens):
        x = emb[tok].copy()
        for layer in range(L):
            xb = rmsnorm(x, ra[layer])
            q, k, v = wq[layer] @ xb, wk[layer] @ xb, wv[layer] @ xb
            for i in range(0, dim, 2):  # run.c's RoPE loop: pairs (i, i+1), frequency from i % head_size
                freq = 1.0 / 10000.0 ** ((i % hs) / hs)
                c, s = np.cos(pos * freq), np.sin(pos * freq)
                for vec in (q, k) if i < kvd else (q,):
                    v0, v1 = vec[i], vec[i + 1]
                    vec[i], vec[i + 1] = v0 * c - v1 * s, v0 * s + v1 * c
            kc[layer, pos], vc[layer, pos] = k, v
            att_out = np.zeros(dim)
            for h in range(nh):
                qh = q[h * hs : (h + 1) * hs]
                kv = (h // mul) * hs
                sc = kc[layer, : pos + 1, kv : kv + hs] @ qh / np.sqrt(hs)
                a = np.exp(sc - sc.max())
                a /= a.sum()
                att_out[h * hs : (h + 1) * hs] = a @ vc[layer, : pos + 1, kv : kv + hs]
            x = x + wo[layer] @ att_out
            xb = rmsnorm(x, rf[layer])
            h1, h3 = w1[layer] @ xb, w3[layer] @ xb
            x = x + w2[layer] @ (h1 / (1.0 + np.exp(-h1)) * h3)
        out.append(wcls @ rmsnorm(x, w["rms_final"]))
    return np.stack(out)


SEQS = [[1, 300, 301, 72, 259, 400, 5, 511], [1, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150]]


@pytest.fixture(scope="module")
def reference() -> list[np.ndarray]:
    cfg, w = _raw_weights(STORIES)
    return [_run_c_forward(cfg, w, s) for s in SEQS]


@pytest.fixture
def float64_math(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers' LlamaRMSNorm and rotary embedding compute in float32 whatever the model dtype; for the
    float64 comparisons they compute in the input's dtype instead (same formulas), isolating the conversion."""
    from transformers.models.llama import modeling_llama as ml

    def norm(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rope(
        self: torch.nn.Module, x: torch.Tensor, position_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hs = self.inv_freq.numel() * 2
        inv = 1.0 / 10000.0 ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs)
        f = position_ids[..., None].double() * inv
        emb = torch.cat((f, f), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    monkeypatch.setattr(ml.LlamaRMSNorm, "forward", norm)
    monkeypatch.setattr(ml.LlamaRotaryEmbedding, "forward", rope)


def _hf_logits(model: torch.nn.Module, seq: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0].double().numpy()


# ---------------------------------------------------------------------------------------------------- tests
def test_stories260k_matches_run_c_forward(reference: list[np.ndarray]) -> None:
    m32 = load_llama2c(STORIES)
    m64 = load_llama2c(STORIES, dtype=torch.float64)
    assert not m32.training and next(m64.parameters()).dtype == torch.float64
    for seq, ref in zip(SEQS, reference):
        scale = np.abs(ref).max()
        d32 = np.abs(_hf_logits(m32, seq) - ref).max()
        d64 = np.abs(_hf_logits(m64, seq) - ref).max()  # transformers' norms/RoPE still compute in float32
        assert d32 <= 1e-4 * scale, (d32, scale)
        assert d64 <= 2e-6 * scale, (d64, scale)


def test_stories260k_float64_exact(reference: list[np.ndarray], float64_math: None) -> None:
    m64 = load_llama2c(STORIES, dtype=torch.float64)
    for seq, ref in zip(SEQS, reference):
        d64 = np.abs(_hf_logits(m64, seq) - ref).max()
        assert d64 <= 1e-12 * np.abs(ref).max(), d64


def test_mutant_without_rope_permutation_fails(
    reference: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(l2c, "_rope_interleaved_to_half", lambda w, heads: w)
    m = load_llama2c(STORIES, dtype=torch.float64)
    ref = reference[0]
    assert np.abs(_hf_logits(m, SEQS[0]) - ref).max() > 1e-2 * np.abs(ref).max()


def test_stories260k_arrays_and_embeddings() -> None:
    h, w = read_llama2c(STORIES)
    assert h == Llama2cHeader(64, 172, 5, 8, 4, 512, True, 512) == read_llama2c_header(STORIES)
    assert STORIES.stat().st_size == h.n_bytes()
    _, raw = _raw_weights(STORIES)
    assert np.array_equal(w["w3"].double().numpy().ravel(), raw["w3"])
    assert torch.equal(read_llama2c_embeddings(STORIES), w["token_embedding_table"])
    # export.py's freq_cis: cos/sin(pos * 10000^(-2i/hs)), stored though unused
    hs = h.head_size
    ang = np.arange(h.seq_len)[:, None] * 10000.0 ** (-np.arange(0, hs, 2) / hs)[None, :]
    assert np.allclose(
        w["freq_cis_real"].numpy(), np.cos(ang), atol=1e-5
    )  # export.py computed them in float32
    assert np.allclose(w["freq_cis_imag"].numpy(), np.sin(ang), atol=1e-5)


@pytest.mark.parametrize("shared", [True, False])
def test_synthetic_round_trip_tied_untied_gqa(tmp_path: Path, shared: bool, float64_math: None) -> None:
    p = tmp_path / "tiny.bin"
    kw = dict(dim=16, hidden_dim=24, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=11, seq_len=8)
    g = torch.Generator().manual_seed(1)
    wq = torch.randn(2, 16, 16, generator=g) * 0.3
    wcls = None if shared else {"wcls": torch.randn(11, 16, generator=g)}
    h = write_llama2c(p, shared_classifier=shared, weights={"wq": wq, **(wcls or {})}, seed=3, **kw)
    assert p.stat().st_size == h.n_bytes() and h.shared_classifier is shared
    h2, w = read_llama2c(p)
    assert h2 == h and torch.equal(w["wq"], wq)
    assert (w["wcls"] is w["token_embedding_table"]) is shared
    if not shared:
        assert torch.equal(w["wcls"], wcls["wcls"])
    m = load_llama2c(p, dtype=torch.float64)
    assert m.config.tie_word_embeddings is shared and m.config.num_key_value_heads == 2
    cfg, raw = _raw_weights(p)
    seq = [0, 3, 10, 7, 7, 1]
    ref = _run_c_forward(cfg, raw, seq)
    assert np.abs(_hf_logits(m, seq) - ref).max() <= 1e-12 * np.abs(ref).max()


def _header(*vals: int) -> bytes:
    return struct.pack("<7i", *vals)


def test_hostile_files_are_one_line_errors_before_any_weight_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "m.bin"
    h = write_llama2c(p, dim=8, hidden_dim=16, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=5, seq_len=4)
    good = p.read_bytes()
    reads: list[int] = []
    real_read = l2c._read_exact
    monkeypatch.setattr(
        l2c, "_read_exact", lambda path, start, n: reads.append(n) or real_read(path, start, n)
    )

    def bad(content: bytes, match: str, fn=read_llama2c) -> None:
        p.write_bytes(content)
        with pytest.raises(ValueError, match=match) as e:
            fn(p)
        assert "\n" not in str(e.value) and "m.bin" in str(e.value)

    bad(good[:-4], f"{len(good) - 4} bytes, but .* implies exactly {h.n_bytes()}")
    bad(good + b"\0", f"{len(good) + 1} bytes, but .* implies exactly {h.n_bytes()}")
    bad(good[:20], "shorter than the 28-byte llama2.c header")
    bad(_header(1 << 30, 16, 1, 2, 1, 5, 4) + good[28:], r"implausible .*\(dim out of range\)")
    bad(
        _header(65536, 1 << 20, 4096, 4096, 4096, 1 << 24, 1 << 22) + good[28:], "implies exactly"
    )  # ~PB claimed
    bad(_header(8, -16, 1, 2, 1, 5, 4) + good[28:], r"\(hidden_dim out of range\)")
    bad(_header(8, 16, 1, 3, 1, 5, 4) + good[28:], "dim not divisible by n_heads")
    bad(_header(8, 16, 1, 2, 3, 5, 4) + good[28:], "n_heads not divisible by n_kv_heads")
    bad(_header(6, 16, 1, 2, 1, 5, 4) + good[28:], "odd head size 3")
    bad(_header(8, 16, 1, 2, 1, 5, 4)[:-4], "shorter than", fn=read_llama2c_embeddings)
    bad(good[:-4], "implies exactly", fn=read_llama2c_embeddings)
    bad(good[:-4], "implies exactly", fn=read_llama2c_header)
    assert reads == []  # every refusal above came before the weight buffer was allocated
    nan = bytearray(good)
    nan[28 + 4 * 41 : 28 + 4 * 42] = struct.pack(
        "<f", float("nan")
    )  # after the 5x8 token table: rms_att_weight[0, 1]
    bad(bytes(nan), "1 non-finite value.* in rms_att_weight")
    nan[28:32] = struct.pack("<f", float("inf"))
    bad(bytes(nan), "non-finite values in the token table", fn=read_llama2c_embeddings)
    with pytest.raises(ValueError, match="does not exist"):
        read_llama2c(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="not a regular file"):
        load_llama2c(tmp_path)
    with pytest.raises(TypeError, match="must be a str or os.PathLike"):
        read_llama2c(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating torch.dtype"):
        load_llama2c(p, dtype=torch.int32)


def test_partial_embeddings_accepts_a_prefix_file(tmp_path: Path) -> None:
    p = tmp_path / "m.bin"
    p.write_bytes(_header(4, 8, 1, 1, 1, -3, 16) + np.arange(12, dtype="<f4").tobytes())
    E = read_llama2c_embeddings(p, partial=True)
    assert E.shape == (3, 4) and E[2, 3].item() == 11.0
    with pytest.raises(ValueError, match="implies exactly"):
        read_llama2c_embeddings(p)
    p.write_bytes(_header(4, 8, 1, 1, 1, -3, 16) + np.arange(11, dtype="<f4").tobytes())
    with pytest.raises(ValueError, match="the 3x4 token table needs 76"):
        read_llama2c_embeddings(p, partial=True)

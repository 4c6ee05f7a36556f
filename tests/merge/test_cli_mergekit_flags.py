"""mergekit-yaml's command-line options on ``orthokit merge``: honoured ones change the output, the rest are
accepted with a one-line notice; the output's config.json dtype and the README.md model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orthokit._fs import MARKER_NAME
from orthokit.io.safetensors_io import open_checkpoint
from orthokit.merge.cli import NO_EFFECT, main

from ._ckpt import state, write_hf


@pytest.fixture()
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    b = state(0)
    write_hf(tmp_path / "base", b)
    write_hf(tmp_path / "ft0", state(1, b))
    write_hf(tmp_path / "ft1", state(2, b))
    (tmp_path / "base" / "tokenizer.json").write_text("{}")
    (tmp_path / "m.yml").write_text(
        "merge_method: ties\nbase_model: base\nmodels:\n  - model: ft0\n  - model: ft1\n"
        "parameters: {density: 0.5, lambda: 0.8}\ndtype: float32\n"
    )
    (tmp_path / "dare.yml").write_text(
        "merge_method: dare_ties\nbase_model: base\nmodels:\n  - model: ft0\n  - model: ft1\n"
        "parameters: {density: 0.5}\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main([*args, "--no-progress"])
    return rc, capsys.readouterr().err


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    ck = open_checkpoint(path)
    return {k: ck.get(k).clone() for k in ck.keys()}


def test_no_effect_options_are_accepted_with_one_notice_each(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(capsys, "m.yml", "plain")[0] == 0
    args = []
    for flag, (takes_value, _why) in NO_EFFECT.items():
        args += [flag, "x"] if takes_value else [flag]
    args += ["--gpu-rich"] if torch.cuda.is_available() else []
    rc, err = _run(capsys, "m.yml", "flags", *args)
    assert rc == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("orthokit merge: note:")]
    for flag in NO_EFFECT:
        assert sum(ln.startswith(f"orthokit merge: note: {flag} ") for ln in notes) == 1, flag
    assert all("has no effect: " in ln for ln in notes if "--gpu-rich" not in ln)
    a, b = _tensors(proj / "plain"), _tensors(proj / "flags")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rc, err = _run(
        capsys, "m.yml", "quiet", "--allow-crimes", "--no-clone-tensors", "--copy-tokenizer", "--quiet", "-vv"
    )
    lines = err.strip().splitlines()
    assert rc == 0 and len(lines) == 2, err  # the two notices, nothing else
    assert lines[1].startswith("orthokit merge: note: --no-clone-tensors has no effect: ")


def test_copy_tokenizer_and_model_card_are_honoured(proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "m.yml", "default")[0] == 0
    files = set(json.loads((proj / "default" / MARKER_NAME).read_text())["files"])
    assert {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "merge_config.yml",
    } <= files
    card = (proj / "default" / "README.md").read_text()
    import orthokit

    assert "`ties`" in card and "* ft0" in card and orthokit.__version__ in card
    assert (proj / "m.yml").read_text().strip() in card  # the YAML config as given
    assert _run(capsys, "m.yml", "notok", "--no-copy-tokenizer", "--no-write-model-card")[0] == 0
    listed = set(json.loads((proj / "notok" / MARKER_NAME).read_text())["files"])
    assert "config.json" in listed and not listed & {"tokenizer.json", "tokenizer_config.json", "README.md"}
    assert not (proj / "notok" / "README.md").exists() and not (proj / "notok" / "tokenizer.json").exists()
    assert _run(capsys, "m.yml", "nocard", "--no-model-card")[0] == 0
    assert not (proj / "nocard" / "README.md").exists() and (proj / "nocard" / "tokenizer.json").exists()


def test_random_seed_shard_size_threads_and_cuda(proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(capsys, "dare.yml", "s1", "--seed", "1")[0] == 0
    assert _run(capsys, "dare.yml", "r1", "--random-seed", "1")[0] == 0
    assert _run(capsys, "dare.yml", "r2", "--random-seed", "2")[0] == 0
    s1, r1, r2 = _tensors(proj / "s1"), _tensors(proj / "r1"), _tensors(proj / "r2")
    assert all(torch.equal(s1[k], r1[k]) for k in s1)
    assert not all(torch.equal(r1[k], r2[k]) for k in r1)
    assert _run(capsys, "m.yml", "sharded", "--out-shard-size", "1KB")[0] == 0
    assert len(list((proj / "sharded").glob("*.safetensors"))) > 1
    before = torch.get_num_threads()
    try:
        assert _run(capsys, "m.yml", "j1", "-j", "1")[0] == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    rc, err = _run(capsys, "m.yml", "bad", "--num-threads", "0")
    assert rc == 1 and "--num-threads must be a positive integer" in err
    if not torch.cuda.is_available():
        rc, err = _run(capsys, "m.yml", "gpu", "--cuda")
        assert rc == 1 and "CUDA is not available" in err and not (proj / "gpu").exists()


def test_output_config_carries_the_out_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2
    )
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg)
    m.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        for prm in m.parameters():
            prm.add_(0.01)
    m.save_pretrained(tmp_path / "ft")
    assert json.loads((tmp_path / "base" / "config.json").read_text()).get("dtype", "float32") == "float32"
    (tmp_path / "c.yml").write_text(
        f"merge_method: task_arithmetic\nbase_model: {tmp_path / 'base'}\nmodels:\n  - model: {tmp_path / 'ft'}\n"
        "parameters: {lambda: 0.5}\ndtype: float32\nout_dtype: bfloat16\n"
    )
    assert main([str(tmp_path / "c.yml"), str(tmp_path / "out"), "--no-progress"]) == 0
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["torch_dtype"] == "bfloat16" and written["dtype"] == "bfloat16"
    ac = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert getattr(ac, "dtype", None) in (torch.bfloat16, "bfloat16") or ac.torch_dtype in (
        torch.bfloat16,
        "bfloat16",
    )
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    ref = open_checkpoint(tmp_path / "out").get("model.layers.0.mlp.up_proj.weight")
    assert torch.equal(loaded.model.layers[0].mlp.up_proj.weight.detach(), ref)

"""Safe merge I/O: what --overwrite may delete, path containment, hostile YAML, non-finite outputs, OS errors,
signals and stale temporary folders (issue 9, item 5)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from orthokit._fs import LOCK_NAME, MARKER_NAME, UnsafeOutputError, check_output_target, resolve_inside
from orthokit.io import safetensors_io
from orthokit.io.config import MAX_DEPTH, ConfigError, load_yaml
from orthokit.io.safetensors_io import SafetensorsError, ShardedCheckpoint, atomic_output_dir, open_checkpoint
from orthokit.merge import merge
from orthokit.merge.api import NonFiniteOutputError
from orthokit.merge.cli import main

from ._ckpt import SHAPES, state, write_hf, write_lora

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture()
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the cwd) with base/, ft1/, ft2/ and merge.yml."""
    b = state(0)
    write_hf(tmp_path / "base", b)
    write_hf(tmp_path / "ft1", state(1, b))
    write_hf(tmp_path / "ft2", state(2, b), shard=500)
    (tmp_path / "merge.yml").write_text(
        "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: ft1\n  - model: ft2\n"
        "parameters: {lambda: 0.5}\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main([*args, "--no-progress"])
    err = capsys.readouterr().err
    return rc, err


def _one_line_error(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("orthokit merge: error: ")
    return lines[0]


# ----------------------------------------------------------------------------------------------- --overwrite


@pytest.mark.parametrize(
    ("out", "why"),
    [
        (".", "current directory"),
        ("..", "current directory or one of its parents"),
        ("base", "is the input base_model"),
        ("ft2", "is the input models[1]"),
        ("base/sub", "inside the input base_model"),
    ],
)
def test_overwrite_refuses_inputs_and_cwd(
    proj: Path, capsys: pytest.CaptureFixture[str], out: str, why: str
) -> None:
    """`orthokit merge cfg.yml . --overwrite` used to wipe the project folder."""
    (proj / "base" / "sub").mkdir()
    before = _tree(proj)
    for extra in (["--dry-run"], []):  # a dry run predicts the refusal
        rc, err = _run(capsys, "merge.yml", out, "--overwrite", *extra)
        assert rc == 1 and why in _one_line_error(err)
    assert _tree(proj) == before  # nothing deleted, nothing written


def test_overwrite_refuses_folder_holding_inputs_or_config(
    proj: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    os.chdir(tmp_path.parent)  # cwd outside the project: only the input/config relations protect it
    before = _tree(proj)
    rc, err = _run(capsys, str(proj / "merge.yml"), str(proj), "--overwrite")
    assert rc == 1 and "contains the input" in _one_line_error(err)
    sub = proj / "cfgdir"
    sub.mkdir()
    (sub / "m.yml").write_text(
        (proj / "merge.yml")
        .read_text()
        .replace("base_model: base", f"base_model: {proj / 'base'}")
        .replace("model: ft", f"model: {proj}/ft")
    )
    rc, err = _run(capsys, str(sub / "m.yml"), str(sub), "--overwrite")
    assert rc == 1 and "contains the config file" in _one_line_error(err)
    assert (sub / "m.yml").is_file() and set(_tree(proj)) >= set(before)


def test_overwrite_only_replaces_orthokit_outputs(proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (proj / "notes").mkdir()
    (proj / "notes" / "todo.txt").write_text("mine")
    rc, err = _run(capsys, "merge.yml", "notes", "--overwrite")
    assert rc == 1 and "not written by orthokit" in _one_line_error(err)
    assert (proj / "notes" / "todo.txt").read_text() == "mine"
    assert _run(capsys, "merge.yml", "merged")[0] == 0
    listed = json.loads((proj / "merged" / MARKER_NAME).read_text())["files"]
    assert "model.safetensors" in listed and "merge_config.yml" in listed and "README.md" in listed
    assert _run(capsys, "merge.yml", "merged", "--overwrite")[0] == 0  # our own output: replaced
    (proj / "merged" / "NOTES.md").write_text("added by the user")
    rc, err = _run(capsys, "merge.yml", "merged", "--overwrite")
    assert rc == 1 and "'NOTES.md'" in _one_line_error(err)
    assert (proj / "merged" / "NOTES.md").is_file()
    (proj / "empty").mkdir()
    assert _run(capsys, "merge.yml", "empty", "--overwrite")[0] == 0  # an empty folder may be replaced


def test_check_output_target_resolves_symlinks(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "base")
    with pytest.raises(UnsafeOutputError, match="is the base"):
        check_output_target(tmp_path / "link", [("base", tmp_path / "base")])
    check_output_target(tmp_path / "other", [("base", tmp_path / "base")])


# ----------------------------------------------------------------------------------------------- shard paths


def _sharded(tmp_path: Path) -> Path:
    write_hf(tmp_path / "m", state(0), shard=400)
    return tmp_path / "m" / "model.safetensors.index.json"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_weight_map_must_stay_inside_the_model_folder(tmp_path: Path, kind: str) -> None:
    idx = _sharded(tmp_path)
    data = json.loads(idx.read_text())
    victim = next(iter(data["weight_map"]))
    shard = data["weight_map"][victim]
    (tmp_path / "other").mkdir()
    os.replace(idx.parent / shard, tmp_path / "other" / "model.safetensors")
    if kind == "dotdot":
        target = "../other/model.safetensors"
    elif kind == "absolute":
        target = str(tmp_path / "other" / "model.safetensors")
    else:
        (idx.parent / "escape.safetensors").symlink_to(tmp_path / "other" / "model.safetensors")
        target = "escape.safetensors"
    data["weight_map"] = {k: (target if v == shard else v) for k, v in data["weight_map"].items()}
    idx.write_text(json.dumps(data))
    with pytest.raises(SafetensorsError, match="outside its model folder"):
        ShardedCheckpoint(idx)
    with pytest.raises(SafetensorsError, match="outside its model folder"):
        open_checkpoint(idx.parent)


def test_linked_tokenizer_file_outside_the_model_is_not_copied(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = proj.parent / "secret.txt"
    secret.write_text("not model data")
    (proj / "base" / "tokenizer_config.json").unlink()
    (proj / "base" / "tokenizer_config.json").symlink_to(secret)
    rc, err = _run(capsys, "merge.yml", "out")
    assert rc == 1 and "tokenizer_config.json" in _one_line_error(err) and "outside its model folder" in err
    assert not (proj / "out").exists()


def test_hf_cache_snapshot_links_are_allowed(tmp_path: Path) -> None:
    repo = tmp_path / "models--org--m"
    write_hf(tmp_path / "src", state(0))
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    os.replace(tmp_path / "src" / "model.safetensors", repo / "blobs" / "f00d")
    (snap / "model.safetensors").symlink_to("../../blobs/f00d")
    assert "lm_head.weight" in open_checkpoint(snap).keys()
    assert resolve_inside(snap, "model.safetensors", "file") == snap / "model.safetensors"


# ----------------------------------------------------------------------------------------------- YAML


def test_yaml_alias_bomb_in_ignored_key_is_refused(proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A billion-laughs bomb under the ignored `int8_mask` passed --dry-run and hung the real run at 3 GB."""
    levels = ["  int8_mask: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"  x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = proj / "bomb.yml"
    bomb.write_text((proj / "merge.yml").read_text().replace("parameters: {lambda: 0.5}\n", "parameters:\n"))
    bomb.write_text(bomb.read_text() + "\n".join(levels) + "\n")
    for extra in (["--dry-run"], []):
        t0 = time.perf_counter()
        rc, err = _run(capsys, "bomb.yml", "out", *extra)
        line = _one_line_error(err)
        assert rc == 1 and "bomb.yml" in line and "anchors" in line
        assert time.perf_counter() - t0 < 5
    assert not (proj / "out").exists()


def test_yaml_size_and_depth_bounds(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yml"
    deep.write_text("a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yml: line 1: nested deeper than 64"):
        load_yaml(deep)
    big = tmp_path / "big.yml"
    big.write_text("a: '" + "x" * (2 << 20) + "'\n")
    with pytest.raises(ConfigError, match=r"big\.yml: the config is \d+ bytes; at most"):
        load_yaml(big)
    with pytest.raises(ConfigError, match="aliases"):
        load_yaml("a: 1\nb: *x\n", from_string=True)  # an undefined alias is refused too


# ----------------------------------------------------------------------------------------------- non-finite


def _nan_ft(proj: Path, value: float) -> None:
    ft = state(1, state(0))
    ft["model.layers.0.mlp.up_proj.weight"][3, 2] = value
    os.replace(proj / "ft1", proj / "ft1_old")
    write_hf(proj / "ft1", ft)


@pytest.mark.parametrize(
    ("method", "value"),
    [("dare_ties", float("nan")), ("ties", float("inf")), ("task_arithmetic", float("nan"))],
)
def test_nonfinite_input_is_an_error_naming_the_tensor(
    proj: Path, capsys: pytest.CaptureFixture[str], method: str, value: float
) -> None:
    _nan_ft(proj, value)
    cfg = proj / "merge.yml"
    dens = "\n    parameters: {density: 0.5}" if method != "task_arithmetic" else ""
    cfg.write_text(
        f"merge_method: {method}\nbase_model: base\nmodels:\n  - model: ft1{dens}\n  - model: ft2{dens}\n"
    )
    before = _tree(proj)
    rc, err = _run(capsys, "merge.yml", "out")
    line = _one_line_error(err)
    assert rc == 1 and "'model.layers.0.mlp.up_proj.weight'" in line and "allow_nonfinite" in line
    assert _tree(proj) == before  # no output, no temporary folder
    assert _run(capsys, "merge.yml", "out", "--allow-nonfinite")[0] == 0
    got = open_checkpoint(proj / "out").get("model.layers.0.mlp.up_proj.weight")
    assert not bool(torch.isfinite(got).all())
    cfg.write_text(cfg.read_text() + "allow_nonfinite: true\n")
    assert _run(capsys, "merge.yml", "out2")[0] == 0


def test_float16_overflow_is_caught(proj: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = state(0)
    big = state(1, b)
    big["lm_head.weight"][0, 0] = 1e5  # > float16 max 65504
    os.replace(proj / "ft1", proj / "ft1_old")
    write_hf(proj / "ft1", big)
    (proj / "merge.yml").write_text(
        (proj / "merge.yml").read_text().replace("{lambda: 0.5}", "{lambda: 1.0}") + "out_dtype: float16\n"
    )
    rc, err = _run(capsys, "merge.yml", "out")
    line = _one_line_error(err)
    assert rc == 1 and "'lm_head.weight'" in line and "overflow to inf when cast to torch.float16" in line
    assert not (proj / "out").exists()


def test_lora_alpha_overflow_is_refused(tmp_path: Path) -> None:
    write_hf(tmp_path / "base", state(0))
    write_lora(tmp_path / "lora", {n: SHAPES[n] for n in SHAPES if "q_proj" in n})
    cfgp = tmp_path / "lora" / "adapter_config.json"
    cfgp.write_text(cfgp.read_text().replace('"lora_alpha": 4.0', '"lora_alpha": 1e400'))
    with pytest.raises(SafetensorsError, match="lora_alpha must be a finite number, got inf"):
        open_checkpoint(tmp_path / "lora", base=tmp_path / "base")


def test_in_memory_merge_checks_finiteness() -> None:
    base = {"w": torch.zeros(3)}
    fts = [{"w": torch.tensor([1.0, float("nan"), 0.0])}, {"w": torch.ones(3)}]
    with pytest.raises(NonFiniteOutputError, match="tensor 'w'.*3 NaN"):  # one NaN spreads via the L1 rescale
        merge(base, fts, "dare_ties", density=0.5)
    out = merge(base, fts, "task_arithmetic", allow_nonfinite=True)
    assert torch.isnan(out["w"][1])


# ----------------------------------------------------------------------------------------------- OS errors


@pytest.mark.parametrize(
    ("where", "code", "expect"),
    [
        ("write", errno.ENOSPC, "No space left on device"),
        ("mkdtemp", errno.EACCES, "Permission denied"),
        ("mkdtemp", errno.EROFS, "Read-only file system"),
    ],
)
def test_os_errors_are_one_line(
    proj: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    code: int,
    expect: str,
) -> None:
    def fail(*a: object, **k: object) -> None:
        raise OSError(code, os.strerror(code), str(proj / "out"))

    if where == "write":
        monkeypatch.setattr(safetensors_io.StreamingShardWriter, "write", fail)
    else:
        monkeypatch.setattr(safetensors_io.tempfile, "mkdtemp", fail)
    before = _tree(proj)
    rc, err = _run(capsys, "merge.yml", "out")
    line = _one_line_error(err)
    assert rc == 1 and expect in line and "out" in line
    assert _tree(proj) == before
    with pytest.raises(OSError):  # --verbose shows the real exception (and its traceback)
        main(["merge.yml", "out", "--no-progress", "--verbose"])


# ----------------------------------------------------------------------------------------------- signals


_SLOW_MERGE = textwrap.dedent(
    """
    import signal, sys, time
    # default dispositions whatever the parent set (e.g. SIGHUP ignored under nohup, inherited by children)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from orthokit.io import safetensors_io
    from orthokit.merge.api import run_merge
    real = safetensors_io.StreamingShardWriter.write
    def slow(self, name, t):
        real(self, name, t)
        print("ready", flush=True)
        time.sleep(60)
    safetensors_io.StreamingShardWriter.write = slow
    run_merge("merge.yml", "out", progress=False)
    """
)


def _start_slow_merge(proj: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.Popen(
        [sys.executable, "-c", _SLOW_MERGE], cwd=proj, env=env, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    tmps = list(proj.glob(".out.tmp-*"))
    assert len(tmps) == 1 and (tmps[0] / LOCK_NAME).is_file()
    return p


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_removes_temporary_folder(proj: Path, sig: signal.Signals) -> None:
    p = _start_slow_merge(proj)
    p.send_signal(sig)
    assert p.wait(timeout=30) == -sig  # the default action still ends the process
    assert list(proj.glob(".out.tmp-*")) == [] and not (proj / "out").exists()


def test_stale_temporary_folder_from_killed_run_is_cleaned(
    proj: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _start_slow_merge(proj)
    p.kill()  # SIGKILL: no handler can run
    p.wait(timeout=30)
    (stale,) = proj.glob(".out.tmp-*")
    alien = proj / ".other.tmp-keep"  # not ours (no lock file): never touched
    alien.mkdir()
    rc, err = _run(capsys, "merge.yml", "out")
    assert rc == 0 and not stale.exists() and alien.is_dir()
    notices = [x for x in err.splitlines() if "stale temporary folder" in x]
    assert len(notices) == 1 and str(stale) in notices[0]


def test_live_owner_temporary_folder_is_kept(tmp_path: Path) -> None:
    live = tmp_path / ".x.tmp-live"
    live.mkdir()
    import socket

    (live / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with atomic_output_dir(tmp_path / "y") as t:
        (t / "f").write_text("1")
    assert live.is_dir()

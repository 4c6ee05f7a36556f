"""Benchmarks write where the user is: ``--out DIR`` (default ``./orthokit_results`` under the cwd), quick runs
named ``*_quick.*`` (never the committed full results' names), and the written paths printed at the end."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import orthokit.bench.optim as O
from orthokit.bench.report import DEFAULT_OUT, result_stem, results_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))
PACKAGE_MAINS = [
    "polar",
    "optim",
    "continual",
    "merge",
    "merge_quality",
    "align",
    "align_canonical",
    "align_losses",
    "steer",
    "diag_capacity",
    "diag_conflict",
    "vsa",
    "dictionary",
    "rotation_exact",
    "rotation_quant",
    "rotation_speed",
]


def _tiny_configs(quick: bool) -> list[O.QualityConfig]:
    return [O.QualityConfig("mnist", steps=4, batch_size=32, eval_every=2, mlp_sizes=(784, 16, 10))]


@pytest.fixture(autouse=True)
def _tiny_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 256-image stand-in for MNIST (these tests check where files go, not what the numbers are)."""
    x, y = torch.rand(256, 784), torch.randint(0, 10, (256,))
    monkeypatch.setitem(O._DATA_CACHE, "mnist", (x, y, x, y))
    monkeypatch.setattr(O, "_configs", _tiny_configs)


def _script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_writes_quick_names_into_out_and_prints_the_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "folder"  # created if missing
    argv = ["--quick", "--only", "quality", "--optimizers", "adamw", "--workers", "1", "--out", str(out)]
    assert O.main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["optim_mnist_quick.png", "optim_quality_quick.json", "optim_quality_quick.md"]
    printed = capsys.readouterr().out.splitlines()
    tail = [ln.strip() for ln in printed[printed.index("[optim] results written to:") + 1 :]]
    assert sorted(tail) == sorted(str((out / n).resolve()) for n in names)


def test_default_out_is_orthokit_results_under_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert O.main(["--quick", "--only", "quality", "--optimizers", "adamw", "--workers", "1"]) == 0
    assert (tmp_path / DEFAULT_OUT / "optim_quality_quick.md").is_file()
    assert str(tmp_path / DEFAULT_OUT / "optim_quality_quick.md") in capsys.readouterr().out
    assert not (ROOT / "benchmarks" / "results" / "optim_quality_quick.md").exists()


def test_results_dir_and_stems(tmp_path: Path) -> None:
    assert result_stem("merge_speed", True) == "merge_speed_quick"
    assert result_stem("merge_speed_quick", True) == "merge_speed_quick"
    assert result_stem("merge_speed", False) == "merge_speed"
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        results_dir(f)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_script_takes_out_with_the_cwd_default(
    script: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    mod = _script(script)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--out" in text and DEFAULT_OUT in text, script.name


@pytest.mark.parametrize("name", PACKAGE_MAINS)
def test_every_package_benchmark_main_takes_out(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    mod = importlib.import_module(f"orthokit.bench.{name}")
    with pytest.raises(SystemExit):
        mod.main(["--help"])
    text = capsys.readouterr().out
    assert "--out" in text and DEFAULT_OUT in text, name
    # `python -m orthokit.bench.<name>` must run main (it silently did nothing for optim and continual)
    assert 'if __name__ == "__main__":' in Path(mod.__file__).read_text(encoding="utf-8"), name

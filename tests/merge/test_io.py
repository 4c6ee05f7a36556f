"""Safetensors I/O: round trips, sharding, corrupt files, atomic output, LoRA application, folder detection."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from orthokit._fs import MARKER_NAME
from orthokit.io.safetensors_io import (
    INDEX_NAME,
    LoraAdapter,
    SafetensorsError,
    SafetensorsFile,
    StreamingShardWriter,
    TensorInfo,
    atomic_output_dir,
    load_file,
    open_checkpoint,
    plan_shards,
    save_sharded,
)

from ._ckpt import SHAPES, state, write_hf, write_lora


def _sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "f16": torch.randn(2, 2, generator=g).half(),
        "f64": torch.randn(4, dtype=torch.float64, generator=g),
        "i64": torch.arange(6).reshape(2, 3),
        "i8": torch.tensor([-1, 2, 3], dtype=torch.int8),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 4),
        "scalar": torch.tensor(2.5),
    }


@pytest.mark.parametrize("shard", [None, 40, 10**9])
def test_round_trip_and_readable_by_safetensors(tmp_path: Path, shard: int | None) -> None:
    sd = _sd()
    plan = save_sharded(sd, tmp_path / "out", max_shard_bytes=shard)
    out = tmp_path / "out"
    idx = json.loads((out / INDEX_NAME).read_text())
    assert set(idx["weight_map"]) == set(sd)
    assert idx["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in sd.values())
    if shard == 40:
        assert len(plan) > 1 and all(s.filename.startswith("model-") for s in plan)
        for s in plan:  # every shard but single-tensor ones respects the limit
            data = sum(i.nbytes for _, i, _, _ in s.tensors)
            assert data <= 40 or len(s.tensors) == 1
    else:
        assert [s.filename for s in plan] == ["model.safetensors"]
    for f in set(idx["weight_map"].values()):  # the reference reader accepts our files
        with safe_open(str(out / f), "pt") as h:
            for k in h.keys():
                assert torch.equal(h.get_tensor(k), sd[k])
    ck = open_checkpoint(out)
    assert sorted(ck.keys()) == sorted(sd)
    for k, v in sd.items():
        got = ck.get(k)
        assert got.dtype == v.dtype and got.shape == v.shape and torch.equal(got, v)
        assert ck.info(k) == TensorInfo(v.dtype, tuple(v.shape))


def test_reads_files_written_by_safetensors(tmp_path: Path) -> None:
    sd = _sd()
    save_file(sd, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
    f = SafetensorsFile(tmp_path / "x.safetensors")
    assert f.metadata == {"format": "pt"}
    for k, v in sd.items():
        assert torch.equal(f.get(k), v)


def test_views_do_not_modify_the_file(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(4)}, str(tmp_path / "x.safetensors"))
    f = SafetensorsFile(tmp_path / "x.safetensors")
    t = f.get("w")
    t += 1  # private copy-on-write mapping
    assert torch.equal(SafetensorsFile(tmp_path / "x.safetensors").get("w"), torch.zeros(4))


def _valid(tmp_path: Path) -> Path:
    p = tmp_path / "ok.safetensors"
    save_file({"a": torch.ones(4), "b": torch.ones(2, 2)}, str(p))
    return p


def _rewrite_header(p: Path, header: dict | bytes) -> None:
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    data = raw[8 + n :]
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    p.write_bytes(struct.pack("<Q", len(h)) + h + data)


def test_corrupt_files_raise_clear_errors(tmp_path: Path) -> None:
    p = _valid(tmp_path)
    raw = p.read_bytes()
    # truncated data
    (tmp_path / "trunc.safetensors").write_bytes(raw[:-5])
    with pytest.raises(SafetensorsError, match=r"trunc\.safetensors: tensor '.*'.*truncated"):
        SafetensorsFile(tmp_path / "trunc.safetensors")
    # too short
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(SafetensorsError, match="only 3 bytes"):
        SafetensorsFile(tmp_path / "short.safetensors")
    # header length beyond the file
    (tmp_path / "hl.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(SafetensorsError, match="exceeds the file size"):
        SafetensorsFile(tmp_path / "hl.safetensors")
    # garbage JSON
    q = tmp_path / "bad.safetensors"
    q.write_bytes(raw)
    _rewrite_header(q, b"{not json")
    with pytest.raises(SafetensorsError, match="not valid JSON"):
        SafetensorsFile(q)
    # unknown dtype / inconsistent size / overlap
    for header, msg in [
        ({"a": {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]}}, "unsupported dtype 'Q7'"),
        ({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}, "need 20"),
        (
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
            },
            "overlap",
        ),
        ({"a": {"dtype": "F32", "shape": [4]}}, "must have dtype, shape and data_offsets"),
    ]:
        q.write_bytes(raw)
        _rewrite_header(q, header)
        with pytest.raises(SafetensorsError, match=msg):
            SafetensorsFile(q)
    with pytest.raises(FileNotFoundError):
        SafetensorsFile(tmp_path / "nope.safetensors")


def test_missing_tensor_names_it(tmp_path: Path) -> None:
    f = SafetensorsFile(_valid(tmp_path))
    with pytest.raises(KeyError, match="tensor 'aa' not found .*did you mean 'a'"):
        f.get("aa")


def test_sharded_index_errors(tmp_path: Path) -> None:
    save_sharded({"a": torch.ones(4), "b": torch.ones(4)}, tmp_path / "m", max_shard_bytes=16)
    idx = json.loads((tmp_path / "m" / INDEX_NAME).read_text())
    shard = idx["weight_map"]["a"]
    idx["weight_map"]["ghost"] = shard
    (tmp_path / "m" / INDEX_NAME).write_text(json.dumps(idx))
    ck = open_checkpoint(tmp_path / "m")
    with pytest.raises(SafetensorsError, match="tensor 'ghost' is mapped to .* but is not in it"):
        ck.get("ghost")
    (tmp_path / "m" / shard).unlink()
    with pytest.raises(SafetensorsError, match="does not exist"):
        open_checkpoint(tmp_path / "m")


def test_folder_detection(tmp_path: Path) -> None:
    (tmp_path / "two").mkdir()
    save_file({"a": torch.ones(1)}, str(tmp_path / "two" / "x.safetensors"))
    save_file({"b": torch.ones(1)}, str(tmp_path / "two" / "y.safetensors"))
    with pytest.raises(SafetensorsError, match="2 .safetensors files but no model.safetensors.index.json"):
        open_checkpoint(tmp_path / "two")
    (tmp_path / "pickle").mkdir()
    torch.save({"a": torch.ones(1)}, tmp_path / "pickle" / "pytorch_model.bin")
    with pytest.raises(SafetensorsError, match="only pickle checkpoints"):
        open_checkpoint(tmp_path / "pickle")
    (tmp_path / "one").mkdir()
    save_file({"a": torch.ones(1)}, str(tmp_path / "one" / "weights.safetensors"))
    assert open_checkpoint(tmp_path / "one").keys() == ["a"]
    with pytest.raises(FileNotFoundError):
        open_checkpoint(tmp_path / "missing")


def test_streaming_writer_checks(tmp_path: Path) -> None:
    plan = plan_shards([("a", TensorInfo(torch.float32, (2,))), ("b", TensorInfo(torch.float32, (3,)))])
    w = StreamingShardWriter(tmp_path / "w", plan)
    with pytest.raises(ValueError, match="expected 'a', got 'b'"):
        w.write("b", torch.ones(3))
    with pytest.raises(ValueError, match=r"planned torch.float32 \[2\], got torch.float64 \[2\]"):
        w.write("a", torch.ones(2, dtype=torch.float64))
    w.write("a", torch.ones(2))
    with pytest.raises(ValueError, match="closed early: 1 planned tensors not written"):
        w.close()
    with pytest.raises(ValueError, match="duplicate tensor name 'a'"):
        plan_shards([("a", TensorInfo(torch.float32, (1,)))] * 2)
    with pytest.raises(ValueError, match="max_shard_bytes must be positive"):
        plan_shards([], 0)


def test_atomic_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(out) as tmp:
            (tmp / "partial.safetensors").write_bytes(b"x" * 10)
            raise RuntimeError("boom")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(out) as tmp:
            raise KeyboardInterrupt
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_output_dir(out) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "v2").write_text("2")
            raise RuntimeError("fail while replacing")
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME, "v1"]  # old output untouched
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "v2").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME, "v2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_applied_checkpoint(tmp_path: Path, rslora: bool) -> None:
    base = state(0)
    write_hf(tmp_path / "base", base, shard=600)
    targets = {n: SHAPES[n] for n in SHAPES if "q_proj" in n}
    deltas = write_lora(tmp_path / "lora", targets, r=2, alpha=4.0, use_rslora=rslora)
    ck = open_checkpoint(tmp_path / "lora", base=tmp_path / "base")
    for n, v in base.items():
        got = ck.get(n)
        if n in deltas:
            torch.testing.assert_close(got.double(), v.double() + deltas[n], rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(got, v)
    with pytest.raises(SafetensorsError, match="base model .* is not a local folder"):
        open_checkpoint(tmp_path / "lora")


def test_lora_errors(tmp_path: Path) -> None:
    write_hf(tmp_path / "base", state(0))
    write_lora(tmp_path / "dora", {"model.layers.0.self_attn.q_proj.weight": (8, 8)}, use_dora=True)
    with pytest.raises(SafetensorsError, match="DoRA"):
        LoraAdapter.load(tmp_path / "dora")
    write_lora(tmp_path / "ghost", {"model.layers.9.self_attn.q_proj.weight": (8, 8)})
    with pytest.raises(SafetensorsError, match="targets tensor 'model.layers.9.self_attn.q_proj.weight'"):
        open_checkpoint(tmp_path / "ghost", base=tmp_path / "base")
    write_lora(tmp_path / "shape", {"model.layers.0.self_attn.q_proj.weight": (8, 5)})
    with pytest.raises(SafetensorsError, match=r"has shape \[8, 5\] but the base tensor has \[8, 8\]"):
        open_checkpoint(tmp_path / "shape", base=tmp_path / "base")
    write_lora(
        tmp_path / "rank", {"model.layers.0.self_attn.q_proj.weight": (8, 8)}, r=2, rank_pattern={"q_proj": 3}
    )
    with pytest.raises(SafetensorsError, match="rank 2 but the config says r=3"):
        LoraAdapter.load(tmp_path / "rank")


def test_load_file(tmp_path: Path) -> None:
    sd = _sd()
    save_sharded(sd, tmp_path / "m", max_shard_bytes=50)
    got = load_file(tmp_path / "m")
    assert all(torch.equal(got[k], v) for k, v in sd.items())


def _rss_file() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    return -1


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_release_drops_resident_pages_and_keeps_data(tmp_path: Path) -> None:
    x = torch.randn(4_000_000)
    save_file({"x": x, "y": torch.ones(3)}, str(tmp_path / "big.safetensors"))
    f = SafetensorsFile(tmp_path / "big.safetensors")
    before = _rss_file()
    assert float(f.get("x").sum()) == pytest.approx(float(x.sum()), rel=1e-4)  # touches all 16 MB
    touched = _rss_file()
    f.release("x")
    after = _rss_file()
    assert touched - before > 12_000_000 and touched - after > 12_000_000
    assert torch.equal(f.get("x"), x) and torch.equal(f.get("y"), torch.ones(3))

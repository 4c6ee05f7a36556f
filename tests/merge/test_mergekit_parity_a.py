"""linear, slerp, nuslerp, multislerp, nearswap, karcher, passthrough: bit-equal to mergekit 0.1.5.

Every case compares with ``mergekit.merge_methods.merge_tensors`` (the real library, installed in the dev env)
with ``torch.equal`` — max |difference| 0 — in float32 and bfloat16 (and float16/float64 where noted), plus the
end-to-end path through :func:`orthokit.merge.merge` on state dicts, the documented deviations, and the input
errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from orthokit.merge import merge
from orthokit.merge.karcher import karcher
from orthokit.merge.linear import linear
from orthokit.merge.multislerp import multislerp
from orthokit.merge.nearswap import nearswap
from orthokit.merge.nuslerp import nuslerp
from orthokit.merge.passthrough import passthrough
from orthokit.merge.slerp import CHUNK, slerp

mk = pytest.importorskip("mergekit.merge_methods")
merge_tensors = mk.merge_tensors

DTYPES = [torch.float32, torch.bfloat16]


def _models(n: int, shape=(129, 67), dtype=torch.float32, seed: int = 0, spread: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=g)
    fts = [base + spread * torch.randn(*shape, generator=g) for _ in range(n)]
    return base.to(dtype), [f.to(dtype) for f in fts]


def _same(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, what
    diff = float((ours.double() - ref.double()).abs().max()) if ours.numel() else 0.0
    assert torch.equal(ours, ref), f"{what}: max |diff| {diff:.3g}"


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16, torch.float64])
def test_linear(dtype: torch.dtype) -> None:
    for n in (1, 2, 3, 6):
        _, fts = _models(n, dtype=dtype, seed=n)
        w = [0.3 + 0.37 * i for i in range(n)]
        for normalize in (True, False):
            ref = merge_tensors(fts, "linear", parameters={"weight": w, "normalize": normalize})
            _same(linear(None, fts, weights=w, normalize=normalize), ref, f"linear n={n} {normalize}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_slerp(dtype: torch.dtype) -> None:
    base, (ft,) = _models(1, dtype=dtype)
    cases = {"random": ft, "colinear": 2 * base, "antipodal": -base, "close": base + 1e-4 * ft}
    for what, other in cases.items():
        for t in (0.0, 0.3, 0.77, 1.0, 1.4):
            ref = merge_tensors([base, other], "slerp", base_index=0, parameters={"t": t})
            _same(slerp(base, [other], t=t), ref, f"slerp {what} t={t}")
    vec, (v2,) = _models(1, shape=(7,), dtype=dtype, seed=1)
    _same(
        slerp(vec, [v2], t=0.4), merge_tensors([vec, v2], "slerp", base_index=0, parameters={"t": 0.4}), "1-D"
    )


def test_slerp_chunked_large_tensor_float32() -> None:
    """Above 2²⁰ entries the norms and the dot are accumulated by chunks, as in mergekit."""
    base, (ft,) = _models(1, shape=(CHUNK // 1000 + 3, 1000), seed=2)
    assert base.numel() > CHUNK
    ref = merge_tensors([base, ft], "slerp", base_index=0, parameters={"t": 0.35})
    _same(slerp(base, [ft], t=0.35), ref, "slerp chunked")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nuslerp(dtype: torch.dtype) -> None:
    base, fts = _models(2, shape=(33, 20), dtype=dtype, seed=3)
    for with_base in (True, False):
        for flatten in (True, False):
            for row_wise in (False, True):
                for w in ([1.0, 1.0], [0.3, 0.9], [1.0, -1.0]):
                    p = {"weight": w, "nuslerp_flatten": flatten, "nuslerp_row_wise": row_wise}
                    ins = [base, *fts] if with_base else fts
                    ref = merge_tensors(ins, "nuslerp", base_index=0 if with_base else None, parameters=p)
                    ours = nuslerp(
                        base if with_base else None,
                        fts,
                        weights=w,
                        nuslerp_flatten=flatten,
                        nuslerp_row_wise=row_wise,
                    )
                    _same(ours, ref, f"nuslerp base={with_base} flatten={flatten} row_wise={row_wise} w={w}")


def test_nuslerp_swapping_the_models_with_their_weights() -> None:
    """t ↔ 1 − t with the endpoints swapped is the same point of the arc (float64)."""
    base, fts = _models(2, dtype=torch.float64, seed=4)
    a = nuslerp(base, fts, weights=[0.3, 0.9], nuslerp_flatten=False)
    b = nuslerp(base, fts[::-1], weights=[0.9, 0.3], nuslerp_flatten=False)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multislerp(dtype: torch.dtype) -> None:
    for n in (1, 2, 3, 5):
        base, fts = _models(n, dtype=dtype, seed=10 + n)
        w = [0.3 + 0.31 * i for i in range(n)]
        for with_base in (True, False):
            for nw in (True, False):
                ins = [base, *fts] if with_base else fts
                p = {"weight": w, "normalize_weights": nw}
                ref = merge_tensors(ins, "multislerp", base_index=0 if with_base else None, parameters=p)
                ours = multislerp(base if with_base else None, fts, weights=w, normalize_weights=nw)
                _same(ours, ref, f"multislerp n={n} base={with_base} normalize_weights={nw}")
    a = _models(1, dtype=dtype)[0]
    ref = merge_tensors([a, -a], "multislerp", parameters={"weight": [1.0, 1.0]})
    _same(multislerp(None, [a, -a]), ref, "multislerp antipodal fallback")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nearswap(dtype: torch.dtype) -> None:
    base, (ft,) = _models(1, dtype=dtype, seed=5, spread=0.1)
    ft.view(-1)[:5] = base.view(-1)[:5]
    for t in (1e-4, 0.05, 0.3, 2.0, 0.0, -1.0):
        ref = merge_tensors([base, ft], "nearswap", base_index=0, parameters={"t": t})
        _same(nearswap(base, [ft], t=t), ref, f"nearswap t={t}")


def test_nearswap_float16_t0_deviation() -> None:
    """Documented deviation: mergekit's t · (1/1e-6) overflows in float16 and gives NaN where θ₀ = θ₁ at t = 0."""
    base = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float16)
    ft = torch.tensor([0.0, 1.5, 1.0], dtype=torch.float16)
    ref = merge_tensors([base, ft], "nearswap", base_index=0, parameters={"t": 0.0})
    assert bool(ref[0].isnan())
    assert torch.equal(nearswap(base, [ft], t=0.0), base)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16, torch.float64])
def test_karcher(dtype: torch.dtype) -> None:
    for n, spread in ((2, 0.05), (3, 1.0), (5, 3.0)):
        _, fts = _models(n, dtype=dtype, seed=20 + n, spread=spread)
        for max_iter, tol in ((10, 1e-5), (3, 1e-5), (40, 1e-7)):
            p = {"max_iter": max_iter, "tol": tol}
            _same(
                karcher(None, fts, max_iter=max_iter, tol=tol),
                merge_tensors(fts, "karcher", parameters=p),
                str(p),
            )
    _, fts = _models(3, dtype=dtype, seed=30)
    fts[1] = torch.zeros_like(fts[1])  # a zero model: out of the mean, in the norm average
    _same(karcher(None, fts), merge_tensors(fts, "karcher"), "karcher with a zero model")
    zeros = [torch.zeros(4, 3, dtype=dtype)] * 2
    _same(karcher(None, zeros), merge_tensors(zeros, "karcher"), "karcher all zero")


@pytest.mark.parametrize("dtype", DTYPES)
def test_passthrough(dtype: torch.dtype) -> None:
    x = _models(0, dtype=dtype)[0]
    assert passthrough(None, [x]) is x
    _same(passthrough(None, [x]), merge_tensors([x], "passthrough"), "passthrough")
    for s in (0.37, 2.0, 0.0, -1.5):
        ref = merge_tensors([x], "passthrough", parameters={"scale": s})
        _same(passthrough(None, [x], scale=[s]), ref, f"passthrough scale={s}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_state_dict_merge_matches_merge_state_dicts(dtype: torch.dtype) -> None:
    """The engine path (orthokit.merge.merge) gives mergekit's merge_state_dicts result tensor for tensor."""
    g = torch.Generator().manual_seed(40)
    sds = [{k: torch.randn(17, 9, generator=g).to(dtype) for k in ("a.weight", "b.weight")} for _ in range(3)]
    w = [0.5, 1.0, 2.0]
    ours = merge(None, sds, "linear", weight=w)
    ref = mk.merge_state_dicts(sds, "linear", parameters={"weight": w})
    for k in ours:
        _same(ours[k], ref[k], f"linear {k}")
    ours = merge(sds[0], [sds[1]], "slerp", t=0.3)
    ref = mk.merge_state_dicts(sds[:2], "slerp", base=0, parameters={"t": 0.3})
    for k in ours:
        _same(ours[k], ref[k], f"slerp {k}")
    ours = merge(None, sds, "karcher")
    ref = mk.merge_state_dicts(sds, "karcher")
    for k in ours:
        _same(ours[k], ref[k], f"karcher {k}")


def test_input_errors() -> None:
    base, fts = _models(3, shape=(4, 3), seed=50)
    with pytest.raises(ValueError, match="slerp needs exactly one model besides the base, got 2"):
        slerp(base, fts[:2], t=0.5)
    with pytest.raises(ValueError, match="slerp takes no weight"):
        slerp(base, fts[:1], weights=[2.0], t=0.5)
    with pytest.raises(ValueError, match="t must be finite"):
        slerp(base, fts[:1], t=float("inf"))
    with pytest.raises(ValueError, match="needs a base"):
        slerp(None, fts[:1], t=0.5)
    with pytest.raises(ValueError, match="nearswap needs exactly one model besides the base, got 3"):
        nearswap(base, fts, t=0.1)
    with pytest.raises(ValueError, match="nuslerp needs exactly two models besides the base, got 3"):
        nuslerp(base, fts)
    with pytest.raises(ValueError, match="passthrough takes exactly one model per tensor, got 3"):
        passthrough(None, fts)
    with pytest.raises(ValueError, match="passthrough takes no weight"):
        passthrough(None, fts[:1], weights=[0.5])
    with pytest.raises(ValueError, match="linear: weights \\[1.0, -1.0\\] sum to zero"):
        linear(None, fts[:2], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="multislerp: weights .* sum to zero"):
        multislerp(None, fts[:2], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="weighted mean of the input directions is zero"):
        multislerp(None, [base, -base, base], weights=[1.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="karcher: weights must be positive"):
        karcher(None, fts, weights=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="karcher: max_iter"):
        karcher(None, fts, max_iter=-1)
    with pytest.raises(TypeError, match="dtype mismatch"):
        linear(None, [fts[0], fts[1].double()])


# ------------------------------------------------------------------------------------------------ slow: CLI


def _configs(b: Path, f0: Path, f1: Path, f2: Path) -> dict[str, str]:
    """mergekit YAML configs, unchanged, one per method (per-layer gradients and filters for slerp)."""
    return {
        "slerp": (
            f"merge_method: slerp\nbase_model: {b}\nmodels:\n  - model: {b}\n  - model: {f0}\nparameters:\n"
            "  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n"
            "    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\ndtype: bfloat16\n"
        ),
        "linear": (
            f"merge_method: linear\nmodels:\n  - model: {f0}\n    parameters: {{weight: 0.5}}\n"
            f"  - model: {f1}\n    parameters: {{weight: [0.2, 0.9]}}\n"
            f"  - model: {f2}\n    parameters: {{weight: 1.0}}\ndtype: float32\n"
        ),
        "nuslerp": (
            f"merge_method: nuslerp\nbase_model: {b}\nmodels:\n  - model: {f0}\n    parameters: {{weight: 0.3}}\n"
            f"  - model: {f1}\n    parameters: {{weight: 0.8}}\nparameters: {{nuslerp_flatten: false}}\n"
            "dtype: float32\n"
        ),
        "multislerp": (
            f"merge_method: multislerp\nbase_model: {b}\nmodels:\n  - model: {f0}\n    parameters: {{weight: 0.3}}\n"
            f"  - model: {f1}\n    parameters: {{weight: 0.8}}\n  - model: {f2}\n    parameters: {{weight: 0.5}}\n"
            "dtype: bfloat16\n"
        ),
        "linear_base_listed": (
            f"merge_method: linear\nbase_model: {b}\nmodels:\n  - model: {b}\n    parameters: {{weight: 0.3}}\n"
            f"  - model: {f0}\n    parameters: {{weight: 0.5}}\ndtype: float32\n"
        ),
        "karcher": f"merge_method: karcher\nmodels:\n  - model: {f0}\n  - model: {f1}\n  - model: {f2}\ndtype: float32\n",
        "nearswap": (
            f"merge_method: nearswap\nbase_model: {b}\nmodels:\n  - model: {b}\n  - model: {f0}\n"
            "parameters: {t: 0.005}\ndtype: float32\n"
        ),
    }


@pytest.mark.slow
def test_cli_bit_equal_to_mergekit_yaml(tmp_path: Path) -> None:
    """The same YAML through ``mergekit-yaml`` and ``orthokit merge``: every output tensor equal."""
    from orthokit.io import open_checkpoint
    from orthokit.merge.cli import main

    from .test_cli import _tiny_llama

    mk_bin = Path(sys.executable).with_name("mergekit-yaml")
    if not mk_bin.is_file():
        pytest.skip("mergekit-yaml not installed")
    paths = _tiny_llama(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for name, text in _configs(*paths).items():
        cfg = tmp_path / f"{name}.yml"
        cfg.write_text(text)
        r = subprocess.run(
            [str(mk_bin), str(cfg), str(tmp_path / f"mk_{name}")],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert main([str(cfg), str(tmp_path / f"ok_{name}"), "--no-progress"]) == 0
        a, m = open_checkpoint(tmp_path / f"ok_{name}"), open_checkpoint(tmp_path / f"mk_{name}")
        assert sorted(a.keys()) == sorted(m.keys()), name
        for k in m.keys():
            _same(a.get(k), m.get(k), f"{name} {k}")

"""Schedules as data: every shipped table is validated on its scalar map; tails never cycle; unsafe gated."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from orthokit.linalg import SCHEDULES, Schedule, get_schedule, newton_schulz, scalar_map, validate_schedule
from orthokit.linalg.coefficients import CLEANUP_QUINTIC, polar_express_coefficients
from orthokit.linalg.schedules import register_schedule

SAFE = sorted(n for n, s in SCHEDULES.items() if not s.unsafe)
UNSAFE = sorted(n for n, s in SCHEDULES.items() if s.unsafe)

# Independent reference: scalar-map ranges on [1e-3, 1] measured in optim.md §13.1 (3 decimals).
REFERENCE_RANGES = {
    ("keller", 5): (0.471, 1.202),
    ("keller", 8): (0.682, 1.134),
    ("quintic", 5): (0.475, 1.145),
    ("polar_express", 5): (0.859, 1.141),
    ("polar_express_8", 8): (1.000, 1.000),
    ("cans", 5): (0.884, 1.120),
    ("deepseek_v4", 10): (1.000, 1.001),
    ("cubic5", 5): (0.119, 1.300),
}


def test_expected_schedules_are_shipped() -> None:
    for name in ("keller", "quintic", "polar_express", "cans", "deepseek_v4", "cubic5"):
        assert name in SAFE
    assert {"root_square", "aol_nvidia"} <= set(UNSAFE)


@pytest.mark.parametrize("name", SAFE)
def test_every_safe_schedule_validates_at_default_and_extra_steps(name: str) -> None:
    sched = SCHEDULES[name]
    chk = validate_schedule(sched)
    assert chk.steps == sched.steps
    assert 0 < chk.out_min <= chk.out_max <= 1.5
    if sched.tail != "raise":
        chk2 = validate_schedule(sched, steps=sched.steps + 3)
        # a convergent tail only tightens the band
        assert chk2.out_min >= chk.out_min - 1e-9 and chk2.out_max <= chk.out_max + 1e-9


@pytest.mark.parametrize(("key", "expected"), sorted(REFERENCE_RANGES.items()))
def test_scalar_map_ranges_match_reference_measurements(
    key: tuple[str, int], expected: tuple[float, float]
) -> None:
    name, steps = key
    chk = validate_schedule(name, steps=steps)
    assert chk.out_min == pytest.approx(expected[0], abs=1.5e-3)
    assert chk.out_max == pytest.approx(expected[1], abs=1.5e-3)


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_schedules_fail_validation_and_are_gated(name: str) -> None:
    with pytest.raises(ValueError, match="fails validation"):
        validate_schedule(name)
    with pytest.raises(ValueError, match="unsafe=True"):
        get_schedule(name)
    with pytest.warns(UserWarning, match="unsafe"):
        assert get_schedule(name, unsafe=True).unsafe


def test_unsafe_failure_modes_are_the_documented_ones() -> None:
    root = validate_schedule("root_square", raise_on_failure=False)
    assert root.out_max == pytest.approx(3.314, abs=2e-3)  # blow-up, optim.md §8
    aol = validate_schedule("aol_nvidia", raise_on_failure=False)
    assert aol.out_min < 0  # sign flip
    assert float(scalar_map("aol_nvidia", 1.0, steps=1)) == pytest.approx(-0.585, abs=1e-3)


def test_cans_cleanup_tail_beats_repeat_last() -> None:
    # NVIDIA repeats the last CANS polynomial: reference range at 6 steps is [0.969, 1.098] (optim.md §13.1)
    cans = SCHEDULES["cans"].coefficients
    rep = validate_schedule(cans + cans[-1:], steps=6)
    assert (rep.out_min, rep.out_max) == pytest.approx((0.969, 1.098), abs=1.5e-3)
    ours = validate_schedule("cans", steps=6)
    assert ours.out_min > rep.out_min and ours.out_max < rep.out_max


def test_fixed_length_schedule_raises_beyond_its_table() -> None:
    with pytest.raises(ValueError, match="fixed 5-step"):
        SCHEDULES["cubic5"].coefficients_for(6)
    with pytest.raises(ValueError, match="fixed 5-step"):
        newton_schulz(torch.randn(8, 8), schedule="cubic5", steps=6)


def test_quintic_continues_with_cleanup_tail_instead_of_cycling() -> None:
    coeffs = SCHEDULES["quintic"].coefficients_for(7)
    assert coeffs[5] == CLEANUP_QUINTIC and coeffs[6] == CLEANUP_QUINTIC
    assert coeffs[5] != coeffs[0]
    # cycling (NVIDIA "cycle" mode) would give σ ∈ [0.064, 0.165] on [1e-2, 1] at 6 steps
    chk = validate_schedule("quintic", steps=6, lower=1e-2)
    assert chk.out_min > 0.75 and chk.out_max < 1.05
    cyc = SCHEDULES["quintic"].coefficients + SCHEDULES["quintic"].coefficients[:1]
    bad = validate_schedule(cyc, steps=6, lower=1e-2, raise_on_failure=False)
    assert bad.out_max < 0.2  # the failure mode the tail policy prevents


def test_stationary_schedule_accepts_any_step_count() -> None:
    k = SCHEDULES["keller"]
    assert k.steps == 5
    assert k.coefficients_for(9) == ((3.4445, -4.7750, 2.0315),) * 9


def test_polar_express_table_matches_generator() -> None:
    np.testing.assert_allclose(
        np.array(SCHEDULES["polar_express"].coefficients),
        np.array(polar_express_coefficients(1e-3, 5, 0.02, 0.02)),
        rtol=0,
        atol=1e-12,
    )


def test_pe8_safe_table_matches_nvidia_published_values() -> None:
    nvidia = (
        (8.2051, -22.9019, 16.4607),
        (4.0664, -2.8612, 0.5184),
        (3.9096, -2.8234, 0.5250),
        (3.2856, -2.4153, 0.4853),
        (2.2779, -1.6198, 0.3985),
        (1.8726, -1.2307, 0.3585),
        (1.8564, -1.2132, 0.3568),
        (1.8750, -1.2500, 0.3750),
    )
    np.testing.assert_allclose(
        np.array(SCHEDULES["polar_express_8"].coefficients), np.array(nvidia), atol=6e-5
    )


@pytest.mark.parametrize("name", SAFE)
def test_scalar_map_equals_matrix_iteration_on_diagonal_input(name: str) -> None:
    """The matrix engine and the scalar map agree: NS on diag(x) (no normalization) is diag(map(x))."""
    x = torch.tensor([1.0, 0.7, 0.3, 0.05, 2e-3], dtype=torch.float64)
    sched = SCHEDULES[name]
    X = newton_schulz(torch.diag(x), schedule=name, normalize="none")
    torch.testing.assert_close(torch.diagonal(X), scalar_map(sched, x), rtol=1e-12, atol=1e-12)


def test_scalar_map_trajectory_and_inputs() -> None:
    traj = scalar_map("keller", [0.5, 1.0], steps=3, trajectory=True)
    assert traj.shape == (4, 2) and traj.dtype == torch.float64
    a, b, c = 3.4445, -4.7750, 2.0315
    assert float(traj[1, 1]) == pytest.approx(a + b + c)
    assert float(scalar_map((CLEANUP_QUINTIC,), 1.0)) == pytest.approx(1.0)


def test_near_rank_one_keeps_sign_for_every_safe_schedule() -> None:
    # σ₁/‖G‖_F ≈ 1: the normalized leading singular value is ~1 → must stay positive through every step
    for name in SAFE:
        traj = scalar_map(name, [1.0, 0.999, 0.98], trajectory=True)
        assert bool((traj[1:] > 0).all()), name


def test_get_schedule_errors_and_aliases() -> None:
    assert get_schedule("PE") is SCHEDULES["polar_express"]
    assert get_schedule("deepseekv4") is SCHEDULES["deepseek_v4"]
    assert get_schedule("Keller") is SCHEDULES["keller"]
    with pytest.raises(ValueError, match="Valid names"):
        get_schedule("nope")
    with pytest.raises(TypeError):
        get_schedule(3)  # type: ignore[arg-type]


def test_schedule_dataclass_validates_its_fields() -> None:
    with pytest.raises(ValueError):
        Schedule("x", ())
    with pytest.raises(ValueError):
        Schedule("x", ((1.0, 2.0),))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Schedule("x", ((1.0, float("nan"), 0.0),))
    with pytest.raises(ValueError):
        Schedule("x", ((1.0, 0.0, 0.0), (1.0, 0.0, 0.0)), tail="stationary")
    with pytest.raises(ValueError):
        Schedule("x", ((1.0, 0.0, 0.0),), tail="cycle")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Schedule("x", ((1.0, 0.0, 0.0),), norm_eps=0.0)
    s = Schedule("x", ((1.5, -0.5, 0.0),))
    with pytest.raises(ValueError):
        s.coefficients_for(0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "y"  # type: ignore[misc]  # frozen


def test_register_schedule_refuses_unsafe_tables_and_duplicates() -> None:
    with pytest.raises(ValueError, match="fails validation"):
        register_schedule(Schedule("bad_sign", ((-1.0, 0.0, 0.0),)))
    assert "bad_sign" not in SCHEDULES
    with pytest.raises(ValueError, match="already registered"):
        register_schedule(Schedule("keller", ((3.4445, -4.7750, 2.0315),), tail="stationary"))
    s = register_schedule(
        Schedule("test_cleanup_only", (CLEANUP_QUINTIC,), tail="stationary", default_steps=30)
    )
    try:
        assert get_schedule("test_cleanup_only") is s
    finally:
        del SCHEDULES["test_cleanup_only"]

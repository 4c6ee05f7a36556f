"""Which Newton–Schulz schedules an optimizer accepts: a measured margin check on the schedule's scalar map.

``orthokit.linalg.schedules.validate_schedule`` checks a schedule on normalized singular values ``x ∈ [1e-3, 1]``.
Inside an optimizer the iteration usually runs in bfloat16 (``ns_dtype="auto"`` on GPU), where the Frobenius
normalization itself is rounded: the largest normalized singular value can land slightly **above** 1 (a near-rank-1
momentum has ``σ_max ≈ ‖G‖_F``). A schedule tuned to the edge of the unit interval can then blow up. The optimizer
therefore requires the scalar map to stay in ``(0, 1.5]`` on the widened interval
``[lower, (1 + 2⁻⁸)/(1 + norm_safety)]`` — 2⁻⁸ is bfloat16's unit roundoff (0.39 %). Measured (default steps;
``docs/optim/framework.md`` has the table):

* ``cans`` (no normalization margin): output range [0.884, 1.120] on [1e-3, 1], but x = 1.004 → 8·10⁵⁷ (its first
  step sends 1 to 1.9915, right at the edge where the next polynomial diverges) — **refused**;
* ``cubic5``: x = 1.004 → −0.115 (a sign flip turns that direction into an ascent step) — **refused**;
* ``keller``, ``quintic``, ``polar_express``, ``polar_express_8``, ``deepseek_v4``: unchanged by the margin.

The lower end is not required to reach 0.5: Keller's and You's quintics (the Muon standards) end at 0.47 for
x = 1e-3, which only shrinks the smallest directions. The schedules stay available to
:func:`orthokit.linalg.polar` for analysis.

Example:
    >>> check_optimizer_schedule("polar_express")
    >>> check_optimizer_schedule("cans")
    Traceback (most recent call last):
    ...
    ValueError: ns_method='cans': Newton-Schulz schedule 'cans' is unsafe in an optimizer: ...
"""

from __future__ import annotations

import functools

__all__ = [
    "BF16_MARGIN",
    "MAX_OUTPUT",
    "schedule_margin_range",
    "safe_optimizer_schedules",
    "check_optimizer_schedule",
]

#: relative overshoot of the normalized σ_max the optimizer tolerates: bfloat16's unit roundoff 2⁻⁸.
BF16_MARGIN = 2.0**-8
#: largest singular value the scalar map may output on the widened interval.
MAX_OUTPUT = 1.5


@functools.cache
def schedule_margin_range(name: str) -> tuple[float, float]:
    """``(min, max)`` of the schedule's scalar map on ``[lower, (1 + 2⁻⁸)/(1 + norm_safety)]`` (default steps).

    Example:
        >>> lo, hi = schedule_margin_range("polar_express")
        >>> 0.85 < lo and hi < 1.15
        True
    """
    from orthokit.linalg.schedules import SCHEDULES, validate_schedule

    sched = SCHEDULES[name]
    chk = validate_schedule(
        sched, upper=(1.0 + BF16_MARGIN) / (1.0 + sched.norm_safety), raise_on_failure=False, n_points=4001
    )
    return float(chk.out_min), float(chk.out_max)


def _is_safe(name: str) -> bool:
    lo, hi = schedule_margin_range(name)
    return lo > 0.0 and hi <= MAX_OUTPUT  # NaN compares False: a diverging map is unsafe


def safe_optimizer_schedules() -> list[str]:
    """Names of the registered, non-unsafe schedules that pass the margin check (sorted).

    Example:
        >>> "cans" in safe_optimizer_schedules(), "keller" in safe_optimizer_schedules()
        (False, True)
    """
    from orthokit.linalg.schedules import SCHEDULES

    return sorted(n for n, s in SCHEDULES.items() if not s.unsafe and _is_safe(n))


def check_optimizer_schedule(name: str) -> None:
    """Raise a one-line ``ValueError`` if schedule ``name`` (a registered key) fails the optimizer margin check."""
    if _is_safe(name):
        return
    lo, hi = schedule_margin_range(name)
    raise ValueError(
        f"ns_method={name!r}: Newton-Schulz schedule {name!r} is unsafe in an optimizer: a normalized singular "
        f"value {100 * BF16_MARGIN:.2f}% above 1 (bfloat16 rounding of the normalization) maps into "
        f"[{lo:.3g}, {hi:.3g}], outside (0, {MAX_OUTPUT}]; use one of {', '.join(safe_optimizer_schedules())} "
        "or an orthokit.polar method such as 'polar_express' or 'svd'"
    )

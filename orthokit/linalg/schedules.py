"""Newton–Schulz coefficient schedules held as data, with their scalar maps and a validator.

A Newton–Schulz (NS) step with coefficients ``(a, b, c)`` acts on a wide, normalized iterate ``X`` as::

    A = X Xᵀ;   X ← a X + (b A + c A²) X

which maps every singular value through the odd quintic ``p(σ) = aσ + bσ³ + cσ⁵`` while keeping the singular
vectors. A *schedule* is the list of per-step triples; after ``k`` steps a singular value ``x`` of the normalized
input ends at the **scalar map** ``p_k ∘ … ∘ p_1 (x)``. Everything about a schedule's accuracy and safety can
therefore be checked on scalars, without matrices (:func:`scalar_map`, :func:`validate_schedule`).

Shipped schedules (``SCHEDULES``; measured ranges in ``docs/linalg/polar.md``):

=================  =====  ================================================================================
name               steps  source
=================  =====  ================================================================================
``keller``         5 (∞)  Jordan et al. 2024 (Muon): stationary (3.4445, −4.7750, 2.0315), σ → [0.68, 1.13]
``quintic``        5      You Jiacheng / leloykun, tuned 5-step (modded-nanogpt medium record #4)
``polar_express``  5      Amsel et al. 2025 PE-5 safe table (ℓ=1e-3, safety 0.02, cushion 0.02)
``polar_express_8``8      Amsel et al. 2025 PE-8 table with the 1.01 safety factor (= NVIDIA "polar_express")
``cans``           5      Grishina, Smirnov, Rakhuba 2025 (CANS), Remez + adaptive interval (NVIDIA table)
``deepseek_v4``    10     8 × Keller then 2 × cleanup (2, −1.5, 0.5) (NVIDIA "deepseekv4")
``cubic5``         5      relaxed cubic (c = 0 skips A²), arXiv:2606.00371; fixed length (raises beyond 5)
=================  =====  ================================================================================

Unsafe published tables are kept for reproduction only and need ``get_schedule(name, unsafe=True)`` (which
warns): ``root_square`` (ROOT's 2048×2048 triple; its scalar map sends σ≈0.56 to 3.3) and ``aol_nvidia`` (the
stale Turbo-Muon "aol" table, p₁(1) = −0.585: flips the sign of the dominant direction without AOL
preconditioning).

Tail policy — what happens when more steps are requested than a fixed table holds:

* ``"cleanup"``: continue with ``tail_coefficients`` (default the cleanup quintic (15/8, −10/8, 3/8), which has
  ``p(1) = 1, p′(1) = p″(1) = 0`` and converges quadratically-plus on the output range of every shipped table);
* ``"stationary"``: the schedule *is* one repeated polynomial (Keller's); any step count is valid;
* ``"raise"``: ``ValueError``. Tables are never silently cycled (NVIDIA's "cycle" mode restarts You's quintic
  at step 6 and shrinks the update ~8×).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from orthokit.linalg.coefficients import CLEANUP_QUINTIC

__all__ = [
    "Schedule",
    "SCHEDULES",
    "ScheduleCheck",
    "get_schedule",
    "register_schedule",
    "scalar_map",
    "validate_schedule",
]

TailPolicy = Literal["cleanup", "stationary", "raise"]
Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Schedule:
    """An NS coefficient schedule: data plus the policies needed to run and validate it.

    Math: step ``t`` applies ``p_t(σ) = a_t σ + b_t σ³ + c_t σ⁵`` to every singular value of the iterate, which
    is first normalized as ``X₀ = G / ((1 + norm_safety)·‖G‖_F + norm_eps)`` so that ``σ_max(X₀) ≤ 1``.

    Args:
        name: canonical name (lower case, ``_``-separated).
        coefficients: per-step ``(a, b, c)`` triples.
        tail: ``"cleanup"`` | ``"stationary"`` | ``"raise"`` — behaviour beyond ``len(coefficients)`` steps.
        tail_coefficients: the polynomial used by ``tail="cleanup"``.
        default_steps: step count used when ``steps=None`` (defaults to ``len(coefficients)``).
        norm_safety: Frobenius-normalization safety margin (PE uses 0.02 with its safety-scaled table).
        norm_eps: additive epsilon of the normalization (zero input → zero output).
        lower: smallest normalized singular value the schedule is designed to lift (validation interval).
        unsafe: published but fails :func:`validate_schedule`; only returned with ``unsafe=True``.
        citation: paper / code the numbers come from.

    Example:
        >>> s = Schedule("my_keller", ((3.4445, -4.7750, 2.0315),), tail="stationary", default_steps=5)
        >>> len(s.coefficients_for(7))
        7
    """

    name: str
    coefficients: tuple[Triple, ...]
    tail: TailPolicy = "cleanup"
    tail_coefficients: Triple = CLEANUP_QUINTIC
    default_steps: int | None = None
    norm_safety: float = 0.0
    norm_eps: float = 1e-7
    lower: float = 1e-3
    unsafe: bool = False
    citation: str = ""
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.coefficients:
            raise ValueError(f"schedule {self.name!r} has no coefficients")
        coeffs = tuple(tuple(float(v) for v in t) for t in self.coefficients)
        for t in coeffs:
            if len(t) != 3 or not all(math.isfinite(v) for v in t):
                raise ValueError(f"schedule {self.name!r}: every step needs 3 finite coefficients, got {t}")
        object.__setattr__(self, "coefficients", coeffs)
        tail = tuple(float(v) for v in self.tail_coefficients)
        if len(tail) != 3 or not all(math.isfinite(v) for v in tail):
            raise ValueError(f"schedule {self.name!r}: tail_coefficients must be 3 finite floats")
        object.__setattr__(self, "tail_coefficients", tail)
        if self.tail not in ("cleanup", "stationary", "raise"):
            raise ValueError(f"tail must be 'cleanup', 'stationary' or 'raise', got {self.tail!r}")
        if self.tail == "stationary" and len(coeffs) != 1:
            raise ValueError("tail='stationary' requires exactly one coefficient triple")
        if self.default_steps is not None and self.default_steps < 1:
            raise ValueError(f"default_steps must be >= 1, got {self.default_steps}")
        if self.norm_safety < 0 or self.norm_eps <= 0:
            raise ValueError("need norm_safety >= 0 and norm_eps > 0")
        if not 0.0 < self.lower < 1.0:
            raise ValueError(f"lower must lie in (0, 1), got {self.lower}")

    @property
    def steps(self) -> int:
        """The default number of steps (``default_steps`` or the table length)."""
        return self.default_steps if self.default_steps is not None else len(self.coefficients)

    def coefficients_for(self, steps: int | None = None) -> tuple[Triple, ...]:
        """The ``steps`` triples to run (``None`` → :attr:`steps`), applying the tail policy.

        Raises:
            ValueError: ``steps < 1``, or more steps than the table holds with ``tail="raise"``.
        """
        if steps is None:
            steps = self.steps
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise TypeError(f"steps must be an int or None, got {type(steps).__name__}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        table = self.coefficients
        if self.tail == "stationary":
            return table * steps
        if steps <= len(table):
            return table[:steps]
        if self.tail == "raise":
            raise ValueError(
                f"schedule {self.name!r} is a fixed {len(table)}-step table and cannot run {steps} steps "
                f"(it has tail='raise'); use steps <= {len(table)} or another schedule"
            )
        return table + (self.tail_coefficients,) * (steps - len(table))


# ----------------------------------------------------------------------------------------------- data
_KELLER: Triple = (3.4445, -4.7750, 2.0315)

#: PE-8 as published without safety factor (Amsel et al. basic.py; HeavyBall ABC_LIST).
_PE8_UNSAFE: tuple[Triple, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)


def _with_safety(table: tuple[Triple, ...], safety: float) -> tuple[Triple, ...]:
    """``p(x) → p(x/(1+safety))`` for every polynomial except the last (Amsel et al. 2025, §4.4)."""
    s = 1.0 + safety
    out = [(a / s, b / s**3, c / s**5) for a, b, c in table[:-1]]
    return (*out, table[-1])


_PE_CITE = (
    "Amsel, Persson, Musco, Gower, 'The Polar Express: Optimal Matrix Sign Methods and Their Application "
    "to the Muon Algorithm', arXiv:2505.16932 (2025)"
)

SCHEDULES: dict[str, Schedule] = {}
_ALIASES: dict[str, str] = {}


def _norm_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_schedule(schedule: Schedule, aliases: Sequence[str] = (), *, validate: bool = True) -> Schedule:
    """Add ``schedule`` to :data:`SCHEDULES` (after checking its scalar map unless it is marked unsafe).

    Args:
        schedule: the :class:`Schedule` (its ``name`` becomes the key).
        aliases: extra lookup names.
        validate: run :func:`validate_schedule` at its default step count and at 3 extra steps (if its tail
            allows) and refuse to register a safe-marked schedule that fails.

    Example:
        >>> s = Schedule("keller_x3", ((3.4445, -4.7750, 2.0315),), tail="stationary", default_steps=3)
        >>> register_schedule(s) is s
        True
        >>> del SCHEDULES["keller_x3"]
    """
    key = _norm_name(schedule.name)
    if key != schedule.name:
        raise ValueError(f"schedule names must be lower case with '_' (got {schedule.name!r})")
    for k in (key, *map(_norm_name, aliases)):
        if k in SCHEDULES or k in _ALIASES:
            raise ValueError(f"schedule {k!r} is already registered")
    if validate and not schedule.unsafe:
        validate_schedule(schedule)
        if schedule.tail != "raise":
            validate_schedule(schedule, steps=schedule.steps + 3)
    SCHEDULES[key] = schedule
    for a in aliases:
        _ALIASES[_norm_name(a)] = key
    return schedule


def get_schedule(name: str | Schedule, *, unsafe: bool = False) -> Schedule:
    """Look up a shipped schedule by name (or alias); pass a :class:`Schedule` through unchanged.

    Args:
        name: e.g. ``"keller"``, ``"quintic"``, ``"polar_express"``, ``"cans"``, ``"deepseek_v4"``, ``"cubic5"``.
        unsafe: allow schedules marked unsafe (emits a ``UserWarning`` explaining the failure mode).

    Raises:
        ValueError: unknown name (lists valid names), or an unsafe schedule without ``unsafe=True``.

    Example:
        >>> get_schedule("keller").coefficients
        ((3.4445, -4.775, 2.0315),)
    """
    if isinstance(name, Schedule):
        sched = name
    else:
        if not isinstance(name, str):
            raise TypeError(f"schedule must be a name or a Schedule, got {type(name).__name__}")
        key = _norm_name(name)
        key = _ALIASES.get(key, key)
        if key not in SCHEDULES:
            raise ValueError(
                f"unknown Newton-Schulz schedule {name!r}. Valid names: {', '.join(sorted(SCHEDULES))}"
            )
        sched = SCHEDULES[key]
    if sched.unsafe:
        if not unsafe:
            raise ValueError(
                f"schedule {sched.name!r} is marked unsafe ({sched.description or 'fails validate_schedule'}); "
                "pass unsafe=True to use it anyway"
            )
        warnings.warn(
            f"using unsafe Newton-Schulz schedule {sched.name!r}: {sched.description}",
            UserWarning,
            stacklevel=2,
        )
    return sched


def _as_schedule(schedule: str | Schedule | Sequence[Triple]) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, str):
        key = _ALIASES.get(_norm_name(schedule), _norm_name(schedule))
        if key in SCHEDULES:
            return SCHEDULES[key]  # validation/scalar maps may inspect unsafe tables too
        return get_schedule(schedule)
    return Schedule("custom", tuple(tuple(t) for t in schedule), tail="raise")  # type: ignore[arg-type]


def scalar_map(
    schedule: str | Schedule | Sequence[Triple],
    x: torch.Tensor | np.ndarray | float | Sequence[float],
    steps: int | None = None,
    *,
    trajectory: bool = False,
) -> torch.Tensor:
    """Compose the schedule's polynomials on scalars: ``p_k ∘ … ∘ p_1 (x)`` in float64.

    ``x`` plays the role of a normalized singular value (``σ / ((1+safety)‖G‖_F + ε)``); the result is the
    singular value the NS iteration outputs for it (exact arithmetic).

    Args:
        schedule: name, :class:`Schedule` or a raw sequence of ``(a, b, c)`` (then ``steps ≤ len``).
        x: scalar(s).
        steps: number of steps (``None`` → the schedule's default; tail policy applies beyond the table).
        trajectory: also return every intermediate: shape ``[steps + 1, *x.shape]`` (row 0 is ``x``).

    Returns:
        float64 tensor of the shape of ``x`` (or the trajectory).

    Example:
        >>> round(float(scalar_map("keller", 1.0, steps=1)), 6)  # 3.4445 - 4.775 + 2.0315
        0.701
    """
    sched = _as_schedule(schedule)
    v = torch.as_tensor(np.asarray(x, dtype=np.float64) if not isinstance(x, torch.Tensor) else x)
    v = v.detach().to(device="cpu", dtype=torch.float64)
    out = [v] if trajectory else None
    for a, b, c in sched.coefficients_for(steps):
        v2 = v * v
        v = v * (a + v2 * (b + c * v2))
        if out is not None:
            out.append(v)
    return torch.stack(out) if out is not None else v


@dataclass(frozen=True)
class ScheduleCheck:
    """Result of :func:`validate_schedule`: the scalar-map output range and the worst intermediate values."""

    name: str
    steps: int
    lower: float
    out_min: float
    out_max: float
    inter_min: float
    inter_max: float


def validate_schedule(
    schedule: str | Schedule | Sequence[Triple],
    steps: int | None = None,
    *,
    lower: float | None = None,
    upper: float = 1.0,
    max_output: float = 1.5,
    max_intermediate: float = 2.0,
    n_points: int = 20001,
    raise_on_failure: bool = True,
) -> ScheduleCheck:
    """Check a schedule's scalar map on ``x ∈ [lower, upper]`` (log-spaced grid plus the end points).

    Passes iff every intermediate value lies in ``(0, max_intermediate]`` and the output in
    ``(0, max_output]``: singular values never change sign (so a near-rank-1 input keeps its leading
    direction — a negative value would turn the update into an ascent step) and never blow up. For example
    ROOT's (2048, 2048) triple fails (σ≈0.56 → 3.3 after 5 steps) and NVIDIA's stale "aol" table fails
    (p₁(1) = −0.585).

    Args:
        schedule: name, :class:`Schedule` or raw triples.
        steps: step count (``None`` → default). Tail policy applies.
        lower: interval start (``None`` → ``schedule.lower``, 1e-3 for all shipped schedules).
        upper: interval end (1 = σ_max after Frobenius normalization).
        max_output, max_intermediate: bounds (Polar Express intermediates reach ``u_t = 2 − ℓ_t < 2``).
        n_points: grid size.
        raise_on_failure: raise ``ValueError`` (else return the check and let the caller decide).

    Returns:
        :class:`ScheduleCheck` with ``out_min, out_max, inter_min, inter_max``.

    Example:
        >>> chk = validate_schedule("polar_express")
        >>> 0.85 < chk.out_min and chk.out_max < 1.15
        True
    """
    sched = _as_schedule(schedule)
    lo = sched.lower if lower is None else float(lower)
    if not 0.0 < lo < upper:
        raise ValueError(f"need 0 < lower < upper, got lower={lo}, upper={upper}")
    grid = np.unique(np.concatenate([np.geomspace(lo, upper, n_points), np.linspace(lo, upper, n_points)]))
    # The scalar map in numpy (same float64 operations as scalar_map): this runs at import for every shipped
    # schedule, and torch's intra-op threads made it take seconds on a loaded 2-core host (0.3 s idle).
    coeffs = sched.coefficients_for(steps)
    n_steps = len(coeffs)
    v, lows, highs = grid, [], []
    # unsafe tables may diverge: that is reported below, not warned about
    with np.errstate(over="ignore", invalid="ignore"):
        for a, b, c in coeffs:
            v2 = v * v
            v = v * (a + v2 * (b + c * v2))
            lows.append(v.min())  # ndarray.min/max propagate NaN (Python's min() would drop it)
            highs.append(v.max())
    out = v
    if n_steps >= 2:  # intermediates = every step but the last
        inter_min, inter_max = float(np.min(lows[:-1])), float(np.max(highs[:-1]))
    else:
        inter_min, inter_max = float(out.min()), float(out.max())
    chk = ScheduleCheck(
        name=sched.name,
        steps=n_steps,
        lower=lo,
        out_min=float(out.min()),
        out_max=float(out.max()),
        inter_min=inter_min,
        inter_max=inter_max,
    )
    problems = []
    if not (chk.out_min > 0 and chk.inter_min > 0):
        problems.append(f"a singular value changes sign (min {min(chk.out_min, chk.inter_min):.4g})")
    if chk.inter_max > max_intermediate:
        problems.append(f"intermediate value {chk.inter_max:.4g} > {max_intermediate}")
    if chk.out_max > max_output:
        problems.append(f"output {chk.out_max:.4g} > {max_output}")
    if not all(math.isfinite(v) for v in (chk.out_min, chk.out_max, chk.inter_min, chk.inter_max)):
        problems.append("non-finite values")
    if problems and raise_on_failure:
        raise ValueError(
            f"schedule {sched.name!r} fails validation at {chk.steps} steps on [{lo:g}, {upper:g}]: "
            + "; ".join(problems)
        )
    return chk


# --------------------------------------------------------------------------------------- registrations
register_schedule(
    Schedule(
        "keller",
        (_KELLER,),
        tail="stationary",
        default_steps=5,
        citation="Jordan et al., 'Muon: An optimizer for hidden layers in neural networks' (2024); torch.optim.Muon",
        description="maximal slope at 0; converges to the band [0.682, 1.134], not to 1",
    ),
    aliases=("muon", "simple", "kj", "ns5"),
)
register_schedule(
    Schedule(
        "quintic",
        (
            (4.0848, -6.8946, 2.9270),
            (3.9505, -6.3029, 2.6377),
            (3.7418, -5.5913, 2.3037),
            (2.8769, -3.1427, 1.2046),
            (2.8366, -3.0525, 1.2012),
        ),
        citation="You Jiacheng / @leloykun tuned 5-step NS (modded-nanogpt medium record #4; Dion, HeavyBall)",
        description="5 tuned steps; beyond 5 continues with the cleanup quintic (never cycles)",
    ),
    aliases=("you",),
)
register_schedule(
    Schedule(
        "polar_express",
        (
            (8.156554524902461, -22.48329292557795, 15.878769915207462),
            (4.042929935166739, -2.808917465908714, 0.5000178451051316),
            (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
            (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
            (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
        ),
        norm_safety=0.02,
        norm_eps=1e-6,
        citation=_PE_CITE + "; table = polar_express_coefficients(1e-3, 5, safety=0.02, cushion=0.02)",
        description="PE-5 safe table (modded-nanogpt record #38, Dion default)",
    ),
    aliases=("pe", "pe5", "polar_express_5"),
)
register_schedule(
    Schedule(
        "polar_express_8",
        _with_safety(_PE8_UNSAFE, 0.01),
        norm_safety=0.01,
        norm_eps=1e-7,
        citation=_PE_CITE + "; PE-8 table (ℓ=1e-3, cushion 0.024) with the 1.01 safety factor",
        description="PE-8 safe table (= NVIDIA Emerging-Optimizers 'polar_express')",
    ),
    aliases=("pe8",),
)
register_schedule(
    Schedule(
        "cans",
        (
            (8.4703, -25.1081, 18.6293),
            (4.1828, -3.1087, 0.5806),
            (3.9619, -2.9541, 0.5630),
            (3.2866, -2.4647, 0.5074),
            (2.2737, -1.6447, 0.4162),
        ),
        citation="Grishina, Smirnov, Rakhuba, 'Accelerating Newton-Schulz iteration for orthogonalization via "
        "Chebyshev-type polynomials' (CANS), arXiv:2506.10935 (2025); table as shipped by NVIDIA "
        "Emerging-Optimizers",
        description="Remez + adaptive interval, 5 steps",
    ),
)
register_schedule(
    Schedule(
        "deepseek_v4",
        (_KELLER,) * 8 + ((2.0, -1.5, 0.5),) * 2,
        tail_coefficients=(2.0, -1.5, 0.5),
        citation="DeepSeek-V4 NS schedule as shipped by NVIDIA Emerging-Optimizers ('deepseekv4')",
        description="8 Keller steps then the cubic-contact cleanup (2, -1.5, 0.5) (p(1)=1, p'(1)=0)",
    ),
    aliases=("deepseekv4",),
)
register_schedule(
    Schedule(
        "cubic5",
        (
            (3.3656576, -3.3420992, 0.0),
            (2.5744352, -1.4957376, 0.0),
            (2.5368962, -1.4312570, 0.0),
            (2.4418906, -1.2764040, 0.0),
            (2.2230472, -0.9630650, 0.0),
        ),
        tail="raise",
        citation="relaxed cubic NS, arXiv:2606.00371 (table as shipped by NVIDIA Emerging-Optimizers)",
        description="cubic (c = 0: the A² product is skipped), fixed 5 steps",
    ),
)
register_schedule(
    Schedule(
        "root_square",
        ((3.4916, -4.8224, 2.1095),),
        tail="stationary",
        default_steps=5,
        unsafe=True,
        citation="ROOT (Huawei Noah's Ark), arXiv:2511.20626, example_train.py coefficients for (2048, 2048)",
        description="p has max 1.2246 on [0,1] and p(1.2246) > 1.2246: sigma ~0.56 is driven to 3.3 in 5 steps",
    ),
)
register_schedule(
    Schedule(
        "aol_nvidia",
        (
            (4.0098, -7.0585, 2.4635),
            (3.4585, -5.5479, 2.5959),
            (2.7573, -3.2939, 1.4254),
            (2.7215, -3.0494, 1.3169),
        ),
        tail="raise",
        unsafe=True,
        citation="Turbo-Muon arXiv:2512.04632 initial-commit table (flash-newton-schulz b73111d) as shipped by "
        "NVIDIA Emerging-Optimizers 'aol'",
        description="p1(1) = -0.585: without AOL preconditioning the dominant direction is reversed",
    ),
)

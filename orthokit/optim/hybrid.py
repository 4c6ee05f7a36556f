"""Parameter routing: ONE optimizer that orthogonalizes hidden matrices and runs AdamW on everything else.

:func:`hybrid` classifies every parameter of a model and builds a single optimizer (one object, one
``state_dict``) whose ``algorithm="ortho"`` groups use the chosen orthogonalized rule and whose
``algorithm="adamw"`` groups use bias-corrected AdamW. :func:`describe` prints which parameter went where and why.

Routing rules (first match wins; reasons are recorded verbatim):

1. ``requires_grad=False`` → not optimized.
2. user overrides ``adamw=[patterns]`` / ``ortho=[patterns]`` (regex searched in the parameter name).
3. fewer than 2 dims (norm gains, biases, scalars) → AdamW, no weight decay (``decay_1d=False``).
4. ``nn.Embedding``/``nn.EmbeddingBag`` weights, and any parameter tied to one → AdamW. "Tied" means the same
   ``Parameter`` object (deduplicated, the reason names the aliases) **or** the same storage (a head built with
   ``nn.Parameter(emb.weight)`` or ``head.weight.data = emb.weight.data``: "tied to embedding 'wte'").
5. output heads, found by structure (the reason says which rule fired):

   a. HuggingFace models: the module returned by ``model.get_output_embeddings()``;
   b. with ``example_input`` given: every module whose forward output *is* (same storage as) a tensor of the
      model's output, found by forward hooks on one no-grad forward in eval mode (training flags, parameters and
      buffers are restored/untouched). Only a module's own ``weight`` is routed this way, and a submodule whose
      weight its parent uses functionally (``nn.MultiheadAttention.out_proj``) fires no hook;
   c. without it, structurally: the **last** ``nn.Linear`` in module registration order, when no ``nn.Linear``
      or convolution of the model (itself included) takes its ``out_features`` as input width — its output cannot
      feed another layer, so it is the classifier (the last Linear of an ``nn.Sequential`` MLP, a ResNet's
      ``fc``). A square last Linear (``out == in``) or one whose width another layer consumes is *not* taken:
      pass ``example_input`` or ``adamw=`` for those;
   d. hints: the owning module is named ``lm_head``/``head``/``classifier``/``output``/``score``, or it is the
      last ``nn.Linear`` and its ``out_features`` equals an embedding's ``num_embeddings``.
6. embedding-like raw parameters by name (``*emb*``, ``wte``, ``wpe``, ``cls_token``, ``mask_token``) → AdamW.
7. the first convolution (the input layer, Keller: "all convolutional filters except the first one") → AdamW
   (``first_conv="adamw"``).
8. everything else with ≥ 2 dims → orthogonalized: ``nn.Conv*`` kernels as ``(out, in·k…)`` with that fan-in for
   the scale, HuggingFace ``Conv1D`` weights (stored ``(in, out)``) with ``layout="in_out"``, other 3-D tensors as
   ``[experts, m, n]`` batches, ``nn.MultiheadAttention.in_proj_weight`` and ``split_qkv={pattern: blocks}``
   matches split into equal row blocks orthogonalized separately.

Learning rates (one rule): the orthogonalized groups take ``lr`` or, when it is not given, the optimizer
constructor's own default (``inspect.signature``; the registry's ``default_lr`` is only the conformance-test lr).
The AdamW groups take ``adamw_lr`` or, when it is not given, the same lr as the orthogonalized groups if the
effective ``scale`` (the ``scale=`` kwarg, else the constructor's default) is ``"match_rms_adamw"`` — updates are
RMS-matched to AdamW's, so one lr serves both (Moonlight) — and Keller's auxiliary-Adam 3e-4 otherwise.

Example:
    >>> import torch
    >>> from orthokit.bench.models import CharGPT
    >>> from orthokit.optim import hybrid, describe
    >>> opt = hybrid(CharGPT(65, d_model=32, n_layer=1, n_head=2, block_size=16), lr=0.02, adamw_lr=3e-3)
    >>> print(describe(opt))   # doctest: +SKIP

References: Jordan et al. 2024 (routing guidance: hidden ≥2-D weights → Muon; embeddings, classifier head,
gains/biases → AdamW; first conv → AdamW); Liu et al. 2025, arXiv:2502.16982 (Moonlight: embeddings and
lm_head on AdamW).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from orthokit.optim.base import OrthogonalOptimizer
from orthokit.optim.registry import constructor_defaults, get_optimizer
from orthokit.optim.transforms import SCALE_MODES, shape_scale

__all__ = ["hybrid", "describe", "Route", "route_parameters"]

_HEAD_NAMES = {"lm_head", "head", "classifier", "output", "score", "out_head"}
_EMB_NAME = re.compile(r"(^|[._])(\w*emb\w*|wte|wpe|cls_token|mask_token)($|[._])", re.IGNORECASE)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class Route:
    """Where one parameter goes: ``rule`` ∈ {"ortho", "adamw", "frozen"}, the reason, and its view options."""

    name: str
    shape: tuple[int, ...]
    rule: str
    reason: str
    flatten: bool | None = None
    split: int = 1
    decay: bool = True
    layout: str = "out_in"


def _is_hf_conv1d(mod: nn.Module) -> bool:
    """HuggingFace ``transformers.pytorch_utils.Conv1D`` (a Linear with weight stored as ``(in, out)``)."""
    return type(mod).__name__ == "Conv1D" and type(mod).__module__.startswith("transformers")


def _compile(patterns: Iterable[str] | str | None) -> list[re.Pattern[str]]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    return [re.compile(p) for p in patterns]


def _flat_tensors(obj: Any, depth: int = 0) -> list[torch.Tensor]:
    """Every tensor inside a (nested) tuple/list/dict/ModelOutput."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth > 6:
        return []
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _flat_tensors(v, depth + 1)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _flat_tensors(v, depth + 1)]
    return []


def _storage_key(t: torch.Tensor) -> tuple[Any, int] | None:
    if t.numel() == 0:
        return None
    try:
        return (t.device, t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. some subclasses)
        return None


def _heads_from_forward(model: nn.Module, example_input: Any) -> dict[int, str]:
    """Modules whose forward output shares storage with a tensor of ``model(example_input)``.

    One forward under ``torch.no_grad()`` in eval mode (no dropout, no BatchNorm running-stat update); every
    module's ``training`` flag is restored afterwards. ``example_input``: a tensor, a tuple of positional
    arguments, or a dict of keyword arguments.
    """
    records: list[tuple[nn.Module, list[torch.Tensor]]] = []
    hooks = []
    for mod in model.modules():
        if any(True for _ in mod.parameters(recurse=False)):
            hooks.append(mod.register_forward_hook(lambda m, _i, o: records.append((m, _flat_tensors(o)))))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, Mapping):
                out = model(**example_input)
            elif isinstance(example_input, tuple):
                out = model(*example_input)
            else:
                out = model(example_input)
    except Exception as e:  # the user's forward failed: say so in one line, nothing was modified
        raise ValueError(f"example_input: model forward failed ({type(e).__name__}: {e})") from e
    finally:
        for h in hooks:
            h.remove()
        for m, f in flags:
            m.training = f
    out_keys = {k for t in _flat_tensors(out) if (k := _storage_key(t)) is not None}
    heads: dict[int, str] = {}
    for mod, outs in records:
        if any(_storage_key(t) in out_keys for t in outs if _storage_key(t) is not None):
            heads[id(mod)] = (
                f"output head: {type(mod).__name__} producing the model's output (forward on example_input)"
            )
    return heads


def _structural_head(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The last ``nn.Linear`` in registration order if no Linear/conv (itself included) reads its output width."""
    linears: list[tuple[str, nn.Linear]] = []
    in_widths: set[int] = set()
    parent_of: dict[int, tuple[str, nn.Module]] = {}
    for mname, mod in model.named_modules():
        for _cname, child in mod.named_children():
            parent_of.setdefault(id(child), (mname, mod))
        if isinstance(mod, nn.Linear):
            linears.append((mname, mod))
            in_widths.add(mod.in_features)
        elif isinstance(mod, _CONV):
            in_widths.add(int(mod.in_channels))
        elif _is_hf_conv1d(mod):
            in_widths.add(int(mod.weight.shape[0]))  # HF Conv1D stores (in, out)
        elif isinstance(mod, nn.MultiheadAttention):  # its in-projection is a raw parameter, not a Linear
            in_widths.update({int(mod.embed_dim), int(mod.kdim), int(mod.vdim)})
    if not linears:
        return None
    name, last = linears[-1]
    if last.out_features in in_widths:
        return None
    pname, parent = parent_of.get(id(last), ("", model))
    if isinstance(parent, nn.Sequential) and len(parent) and parent[-1] is last:
        where = f"last Linear of Sequential {pname!r}" if pname else "last Linear of the Sequential model"
    else:
        where = f"last Linear in registration order ({name!r})"
    return last, f"output head: {where}; out_features={last.out_features} feeds no other layer"


def _hf_output_head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    if not callable(get):
        return None
    try:
        head = get()
    except (NotImplementedError, AttributeError, TypeError):
        return None
    return head if isinstance(head, nn.Module) else None


def route_parameters(
    model: nn.Module,
    *,
    adamw: Iterable[str] | str | None = None,
    ortho: Iterable[str] | str | None = None,
    split_qkv: Mapping[str, int] | None = None,
    first_conv: str = "adamw",
    example_input: Any = None,
) -> list[tuple[Route, torch.Tensor]]:
    """Classify every (deduplicated) parameter of ``model``; see the module docstring for the rules.

    Args:
        model: the module.
        adamw, ortho: regex patterns forcing parameters to AdamW / the orthogonalized rule.
        split_qkv: ``{name_regex: blocks}`` row-block splits.
        first_conv: ``"adamw"`` or ``"ortho"`` for the first convolution.
        example_input: optional input for one no-grad forward that finds the module(s) producing the model's
            output (rule 5b): a tensor, a tuple of positional args or a dict of keyword args.

    Returns ``[(Route, parameter), ...]`` in ``model.named_parameters()`` order.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> [(r.name, r.rule) for r, _ in route_parameters(m)]
        [('0.weight', 'ortho'), ('0.bias', 'adamw'), ('2.weight', 'adamw'), ('2.bias', 'adamw')]
        >>> [r.reason for r, _ in route_parameters(m) if r.name == "2.weight"]
        ['output head: last Linear of the Sequential model; out_features=2 feeds no other layer']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if first_conv not in ("adamw", "ortho"):
        raise ValueError(f"first_conv must be 'adamw' or 'ortho', got {first_conv!r}")
    force_adamw, force_ortho = _compile(adamw), _compile(ortho)
    splits: list[tuple[re.Pattern[str], int]] = []
    for pat, k in (split_qkv or {}).items():
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"split_qkv[{pat!r}] must be a positive int (number of row blocks), got {k!r}")
        splits.append((re.compile(pat), k))

    owner: dict[int, tuple[str, nn.Module, str]] = {}  # id(param) -> (module name, module, attr) first owner
    emb_ids: dict[int, str] = {}
    vocab_sizes: set[int] = set()
    linears: list[nn.Linear] = []
    convs: list[nn.Module] = []
    for mname, mod in model.named_modules():
        if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
            emb_ids[id(mod.weight)] = f"{mname}.weight" if mname else "weight"
            vocab_sizes.add(mod.num_embeddings)
        if isinstance(mod, nn.Linear):
            linears.append(mod)
        if isinstance(mod, _CONV):
            convs.append(mod)
        for attr, p in mod.named_parameters(recurse=False):
            owner.setdefault(id(p), (mname, mod, attr))
    last_linear = linears[-1] if linears else None
    # storage of every embedding table, for heads tied by storage rather than by Parameter identity
    emb_storage: dict[tuple[Any, int], str] = {}
    for mname, mod in model.named_modules():
        if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)) and (k := _storage_key(mod.weight)) is not None:
            emb_storage.setdefault(k, mname or "<model>")
    heads: dict[int, str] = {}  # id(module) -> reason
    hf_head = _hf_output_head(model)
    if hf_head is not None:
        heads[id(hf_head)] = "output head: model.get_output_embeddings()"
    if example_input is not None:
        for k, v in _heads_from_forward(model, example_input).items():
            heads.setdefault(k, v)
    else:
        found = _structural_head(model)
        if found is not None:
            heads.setdefault(id(found[0]), found[1])
    first_conv_mod = convs[0] if convs else None
    aliases: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(n)

    out: list[tuple[Route, torch.Tensor]] = []
    for name, p in model.named_parameters():
        shape = tuple(p.shape)
        mname, mod, attr = owner[id(p)]
        leaf = mname.rsplit(".", 1)[-1] if mname else ""

        def R(rule: str, reason: str, **kw: Any) -> None:
            out.append((Route(name, shape, rule, reason, **kw), p))  # noqa: B023

        if not p.requires_grad:
            R("frozen", "requires_grad=False: not optimized")
            continue
        if p.is_complex():
            raise ValueError(
                f"parameter {name!r} is complex; orthokit optimizers support real parameters only"
            )
        split = next((k for pat, k in splits if pat.search(name)), 1)
        if isinstance(mod, nn.MultiheadAttention) and attr == "in_proj_weight" and split == 1:
            split = 3
        flatten = True if isinstance(mod, _CONV) else None
        if any(pat.search(name) for pat in force_adamw):
            R("adamw", "forced by adamw= pattern", decay=p.dim() >= 2)
        elif any(pat.search(name) for pat in force_ortho):
            R("ortho", "forced by ortho= pattern", flatten=flatten, split=split)
        elif p.dim() < 2:
            R("adamw", f"{p.dim()}-D parameter (norm gain / bias / scalar)", decay=False)
        elif id(p) in emb_ids and len(aliases[id(p)]) > 1:
            others = [a for a in aliases[id(p)] if a != name]
            R("adamw", f"embedding table (tied with {', '.join(others)})")
        elif id(p) in emb_ids:
            R("adamw", "embedding table (lookup, not a linear map)")
        elif (sk := _storage_key(p)) is not None and sk in emb_storage and p.dim() == 2:
            R("adamw", f"tied to embedding {emb_storage[sk]!r} (shares its storage)")
        elif id(mod) in heads and attr == "weight":
            R("adamw", heads[id(mod)])
        elif leaf in _HEAD_NAMES:
            R("adamw", f"output head (module named {leaf!r})")
        elif mod is last_linear and isinstance(mod, nn.Linear) and mod.out_features in vocab_sizes:
            R("adamw", f"final Linear with out_features={mod.out_features} = an embedding's num_embeddings")
        elif _EMB_NAME.search(name.rsplit(".", 1)[-1]) or (attr == name and _EMB_NAME.search(name)):
            R("adamw", "embedding-like parameter (by name)")
        elif mod is first_conv_mod and first_conv == "adamw":
            R("adamw", "first convolution (input layer)")
        elif _is_hf_conv1d(mod) and p.dim() == 2 and attr == "weight":
            R("ortho", f"HF Conv1D stored (in, out) = {shape}: fan-in = rows", layout="in_out")
        elif isinstance(mod, _CONV):
            R(
                "ortho",
                f"conv kernel as (out, in·k) = ({shape[0]}, {p[0].numel()})",
                flatten=True,
                split=split,
            )
        elif p.dim() == 2:
            R(
                "ortho",
                "hidden matrix" + (f", split into {split} row blocks" if split > 1 else ""),
                split=split,
            )
        else:
            R("ortho", f"{p.dim()}-D stack as a batch of {shape[-2]}×{shape[-1]} matrices", split=split)
    return out


def hybrid(
    model: nn.Module,
    optimizer: str = "muon",
    lr: float | None = None,
    *,
    adamw_lr: float | None = None,
    adamw_betas: tuple[float, float] = (0.9, 0.95),
    adamw_eps: float = 1e-8,
    adamw_wd: float = 0.0,
    decay_1d: bool = False,
    adamw: Iterable[str] | str | None = None,
    ortho: Iterable[str] | str | None = None,
    split_qkv: Mapping[str, int] | None = None,
    first_conv: str = "adamw",
    example_input: Any = None,
    **kwargs: Any,
) -> OrthogonalOptimizer:
    """Build ONE optimizer: hidden matrices → ``optimizer`` (orthogonalized), the rest → AdamW.

    Args:
        model: the ``nn.Module`` whose parameters are routed (see :func:`route_parameters` for the rules).
        optimizer: registry name of the orthogonalized rule (``"muon"``, ``"normuon"``, ...).
        lr: lr of the orthogonalized groups (default: the optimizer constructor's default ``lr``, read with
            ``inspect.signature`` — the same as ``Cls(params)``).
        adamw_lr: lr of the AdamW groups (default: the orthogonalized lr when the effective ``scale`` — the
            ``scale=`` kwarg, else the constructor's default — is ``"match_rms_adamw"``, the point of that
            convention (AdaMuon, ROOT); else 3e-4, Keller's auxiliary-Adam default).
        adamw_betas, adamw_eps: AdamW hyperparameters (Keller/Moonlight use betas (0.9, 0.95)).
        adamw_wd: decoupled weight decay of ≥2-D AdamW params (embeddings, heads, first conv).
        decay_1d: also decay 1-D params (norm gains, biases) with ``adamw_wd``.
        adamw, ortho: regex patterns forcing parameters to AdamW / the orthogonalized rule (forcing a 1-D
            parameter to the orthogonalized rule raises ``ValueError`` naming it).
        split_qkv: ``{name_regex: blocks}`` — orthogonalize matching weights as ``blocks`` equal row blocks
            (fused QKV: 3).
        first_conv: ``"adamw"`` (default) or ``"ortho"`` for the first convolution.
        example_input: optional model input; one no-grad eval-mode forward with hooks finds the module(s)
            producing the output, which go to AdamW as heads (see :func:`route_parameters`).
        **kwargs: flat kwargs of the orthogonalized optimizer (``weight_decay``, ``momentum``, ``ns_method``,
            ``scale``, ``batched``, ``distributed``, ...).

    Returns:
        An instance of the registered optimizer class, with groups tagged ``role`` ∈ {"ortho", "adamw",
        "adamw_no_decay"} and a routing table for :func:`describe`.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10))
        >>> opt = hybrid(model, "muon", lr=0.02, adamw_lr=1e-3)
        >>> [g["role"] for g in opt.param_groups]
        ['ortho', 'adamw', 'adamw_no_decay']
    """
    cls = get_optimizer(optimizer)
    ctor = constructor_defaults(cls)
    if lr is None:
        if "lr" not in ctor:
            raise TypeError(f"{cls.__name__} has no default lr; pass lr=")
        lr = ctor["lr"]
    if adamw_lr is None:
        scale = kwargs.get("scale", ctor.get("scale"))
        adamw_lr = lr if scale == "match_rms_adamw" else 3e-4
    routes = route_parameters(
        model,
        adamw=adamw,
        ortho=ortho,
        split_qkv=split_qkv,
        first_conv=first_conv,
        example_input=example_input,
    )
    ortho_groups: dict[tuple[Any, int, str], list[tuple[str, torch.Tensor]]] = {}
    adamw_decay: list[tuple[str, torch.Tensor]] = []
    adamw_nodecay: list[tuple[str, torch.Tensor]] = []
    for r, p in routes:
        if r.rule == "ortho":
            ortho_groups.setdefault((r.flatten, r.split, r.layout), []).append((r.name, p))
        elif r.rule == "adamw":
            (adamw_decay if (r.decay or decay_1d) else adamw_nodecay).append((r.name, p))
    groups: list[dict[str, Any]] = []
    for (flatten, split, layout), ps in ortho_groups.items():
        g: dict[str, Any] = {"params": ps, "role": "ortho", "flatten": flatten, "split": split}
        if layout != "out_in":
            g["layout"] = layout
        groups.append(g)
    common = {"algorithm": "adamw", "lr": adamw_lr, "betas": tuple(adamw_betas), "eps": adamw_eps}
    if adamw_decay:
        groups.append({"params": adamw_decay, "role": "adamw", "weight_decay": adamw_wd, **common})
    if adamw_nodecay:
        groups.append({"params": adamw_nodecay, "role": "adamw_no_decay", "weight_decay": 0.0, **common})
    if not groups:
        raise ValueError("model has no trainable parameters")
    kwargs.setdefault("fallback", "error")  # routing is explicit: a 1-D param forced to ortho= is an error
    opt = cls(groups, lr=lr, **kwargs)
    opt._routes = [r for r, _ in routes]  # type: ignore[attr-defined]
    return opt


def _fmt_lr(x: Any) -> str:
    return f"{float(x):.3g}"


def describe(optimizer: torch.optim.Optimizer, *, printed: bool = False) -> str:
    """A table of every parameter: rule (ortho/adamw/frozen), matrix view, lr, shape scale, wd and the reason.

    Works for any :class:`OrthogonalOptimizer` (reasons come from :func:`hybrid` when it built the optimizer).

    Args:
        optimizer: the optimizer to describe.
        printed: also ``print`` the table.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> text = describe(hybrid(m))
        >>> "hidden matrix" in text, "output head: last Linear of the Sequential model" in text
        (True, True)
    """
    given = type(optimizer).__name__
    # wrappers (accelerate's AcceleratedOptimizer in a Trainer, orthokit.projection's Projected) keep the real
    # optimizer in `.optimizer`: describe that one
    for _ in range(4):
        if isinstance(optimizer, OrthogonalOptimizer) or not hasattr(optimizer, "optimizer"):
            break
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, OrthogonalOptimizer):
        raise TypeError(
            f"describe() needs an orthokit OrthogonalOptimizer (or a wrapper of one), got {given}"
        )
    reasons = {r.name: r.reason for r in getattr(optimizer, "_routes", [])}
    # after an LR scheduler's warmup starts, ``lr`` is the current (possibly 0) value: also show the group's
    # ``initial_lr`` — the base value the scheduler multiplies (the peak of warmup-then-decay schedules)
    sched = any("initial_lr" in g for g in optimizer.param_groups)
    rows = [("parameter", "shape", "rule", "matrices", "lr", "scale", "wd", "reason")]
    if sched:
        rows[0] = rows[0][:5] + ("base lr",) + rows[0][5:]
    seen: set[str] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = optimizer.param_name(p)
            seen.add(name)
            if group["algorithm"] == "ortho":
                v = optimizer.matrix_view(p)
                view = f"{v.mats}×{v.m}×{v.n}" if v.mats > 1 else f"{v.m}×{v.n}"
                if v.transposed:
                    view += " (in×out)"
                mode = group.get("scale")
                scale = (
                    f"{mode}={shape_scale(mode, v.fan_out, v.fan_in):.3g}"
                    if mode in SCALE_MODES
                    else str(mode or "-")
                )
                rule = type(optimizer).__name__.lower()
            else:
                view, scale, rule = "-", "-", "adamw"
            default_reason = "orthogonalized group" if group["algorithm"] == "ortho" else "adamw group"
            if group.get("role") == "fallback":
                default_reason = "AdamW fallback: cannot be orthogonalized (fewer than 2 dims or empty)"
            row = (name, "×".join(map(str, p.shape)), rule, view, _fmt_lr(group["lr"]))
            if sched:
                row += (_fmt_lr(group["initial_lr"]) if "initial_lr" in group else "-",)
            wd = _fmt_lr(group.get("weight_decay", 0.0))
            rows.append(row + (scale, wd, reasons.get(name, default_reason)))
    for r in getattr(optimizer, "_routes", []):
        if r.rule == "frozen" and r.name not in seen:
            rows.append(
                (
                    r.name,
                    "×".join(map(str, r.shape)),
                    "frozen",
                    "-",
                    "-",
                    *(("-",) if sched else ()),
                    "-",
                    "-",
                    r.reason,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n_ortho = sum(p.numel() for g in optimizer.param_groups if g["algorithm"] == "ortho" for p in g["params"])
    n_all = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    lines.append(
        f"{n_ortho:,} of {n_all:,} parameters ({100.0 * n_ortho / max(n_all, 1):.1f}%) orthogonalized"
    )
    if sched:
        lines.append("lr = the current value; base lr = initial_lr, which the LR scheduler multiplies")
    text = "\n".join(lines)
    if printed:
        print(text)
    return text

r"""Rotations of BERT-family (post-LN) encoders: what is exact, and how it is fused.

A BERT layer is *post-LN*: ``h ← LN(h + Attn(h))``, ``h ← LN(h + FFN(h))`` with ``LN(z) = γ ⊙ (z − μ(z))/σ(z) + β``.
The Llama recipe (QuaRot C1) rotates the residual stream by one ``Q`` (R1) and relies on
``RMSNorm(xQ) = RMSNorm(x)Q`` after fusing ``γ``. Here that identity fails three ways: the mean ``μ`` is taken in
the unrotated basis, and ``γ``/``β`` sit *after* the normalization on the stream itself, so they cannot be folded
into the next linear without changing the residual that the following add uses. Hence **R1 is skipped** for
post-LN encoders (QuaRot §3 and SpinQuant assume pre-norm; nn.md C1 "Models where this does NOT apply"). What is
exact, all in float64 and cast back:

- **R2 (offline, per head):** with ``B = diag(R, …, R)`` over the heads, ``value`` gets ``W ← Bᵀ W``, ``b ← b B``
  (each head's value is rotated), ``attention.output.dense`` gets ``W ← W B``. Attention probabilities mix tokens,
  not features, so ``softmax(·) (V B) (W B)ᵀ = softmax(·) V Wᵀ``.
- **R3 = "kv" (offline, per head):** ``query`` and ``key`` rows rotated by the same per-head ``R``:
  ``(q_h R)(k_h R)ᵀ = q_h k_hᵀ``. BERT in transformers 5.x has only absolute position embeddings (added before the
  encoder), so nothing sits between the projection and the dot product and the rotation is free at inference, unlike
  Llama's post-RoPE online R3. The cached/quantized keys (``orthokit.rotation.quantize_model(kv_bits=…)``) are the
  rotated ones.
- **Online input rotations** (:class:`~orthokit.rotation.online.OnlineRotatedLinear`, ``y = (xQ)(WQ)ᵀ``):
  ``"linears"`` wraps every encoder ``nn.Linear`` (query/key/value, attention output, FFN in, FFN out) with one ``Q``
  per ``in_features`` (hidden → one ``Q``, intermediate → another; the MiniLM experiment of nn.md C9);
  ``"down_proj"`` wraps only the FFN output ``dense`` (the BERT analogue of QuaRot's R4). The cost is one extra
  ``x ↦ xQ`` per wrapped linear and token (an FWHT for Hadamard rotations).

Seeds: every rotation is drawn with a seed derived from ``seed`` and a site tag (``derive_seed``), and recorded in
the report's ``rotations`` (``"R2"``, ``"R3"``, ``"R4"``, ``"online_in{n}"``).

Example:
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> from orthokit.rotation.bert import rotate_bert
    >>> cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
    ...                  vocab_size=50, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    >>> _ = torch.manual_seed(0)
    >>> model = BertModel(cfg).eval()
    >>> ids = torch.randint(0, 50, (2, 7))
    >>> ref = model(ids).last_hidden_state
    >>> rotate_bert(model, "hadamard", seed=0, online=("linears", "kv"), r2=True)
    >>> bool(torch.allclose(model(ids).last_hidden_state, ref, atol=1e-5))
    True
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from orthokit.rotation.online import OnlineRotatedLinear

if TYPE_CHECKING:
    from orthokit.rotation.base import Rotation

__all__ = ["rotate_bert", "bert_layers", "derive_seed", "BERT_SITES", "R1_SKIP_REASON"]

#: the online sites understood by :func:`rotate_bert`
BERT_SITES = ("linears", "down_proj", "kv")
#: the reason recorded under ``report.skipped["R1"]``
R1_SKIP_REASON = (
    "post-LN encoder: LayerNorm after the residual add (mean, gain, bias) does not commute with a rotation "
    "of the residual stream; online per-linear input rotations ('linears') are used instead"
)
_ATTN_KINDS = ("attention", "crossattention")


def derive_seed(seed: int, tag: str) -> int:
    """A deterministic seed in ``[0, 2³¹)`` for site ``tag`` from the user's ``seed`` (SHA-256, platform-free).

    Example:
        >>> from orthokit.rotation.bert import derive_seed
        >>> derive_seed(0, "R2") == derive_seed(0, "R2") != derive_seed(1, "R2")
        True
    """
    digest = hashlib.sha256(f"orthokit.rotation:{int(seed)}:{tag}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _make_rotation(spec: Any, n: int, *, seed: int) -> Rotation:
    from orthokit.rotation.registry import make_rotation

    return make_rotation(spec, n, seed=seed)


def _is_rotation(obj: object) -> bool:
    return all(hasattr(obj, a) for a in ("n", "matrix", "apply")) and not isinstance(obj, torch.Tensor)


def bert_layers(model: nn.Module) -> list[nn.Module]:
    """The encoder layers of a BERT-family model (``BertModel`` or any head class holding one).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: no ``encoder.layer`` list with BERT-shaped layers (``attention.self.query/key/value``,
            ``attention.output.dense``, ``intermediate.dense``, ``output.dense``); the message names the class.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    base = getattr(model, "base_model", model)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"model: {type(model).__name__} has no BERT-style encoder.layer list")
    for i, layer in enumerate(layers):
        for path in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ):
            mod: Any = layer
            for part in path.split("."):
                mod = getattr(mod, part, None)
            if isinstance(mod, OnlineRotatedLinear):
                raise ValueError(f"model: encoder.layer.{i}.{path} is already online-rotated (rotate once)")
            if not isinstance(mod, nn.Linear):
                raise ValueError(
                    f"model: {type(model).__name__} encoder.layer.{i}.{path} is not an nn.Linear "
                    "(not a BERT-family layer)"
                )
    return list(layers)


@dataclass
class _Edit:
    """Pending float64 edits of one linear: ``W ← rowsᵀ·W·cols`` (block-diag per head), then an online ``Q``."""

    name: str
    linear: nn.Linear
    row_rot: torch.Tensor | None = None  # (n_out, n_out) block-diagonal, rows W ← Rᵀ W, b ← b R
    col_rot: torch.Tensor | None = None  # (n_in, n_in) block-diagonal, W ← W R
    online: Rotation | None = None
    tags: list[str] = field(default_factory=list)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.linear.weight.detach().to(torch.float64)
        b = None if self.linear.bias is None else self.linear.bias.detach().to(torch.float64)
        if self.row_rot is not None:
            w = self.row_rot.T @ w
            b = None if b is None else b @ self.row_rot
        if self.col_rot is not None:
            w = w @ self.col_rot
        if self.online is not None:
            w = w @ self.online.matrix(dtype=torch.float64, device=w.device)
        return w, b


def _per_head(r: torch.Tensor, heads: int, device: torch.device) -> torch.Tensor:
    """``diag(r, …, r)`` with ``heads`` blocks (float64)."""
    return torch.block_diag(*([r.to(torch.float64)] * heads)).to(device)


def _per_head_cols(edit: _Edit, block: torch.Tensor) -> None:
    """R2 on the attention output dense: its input columns, per head."""
    edit.col_rot = block if edit.col_rot is None else edit.col_rot @ block
    edit.tags.append("R2 in")


def _per_head_rows(edit: _Edit, block: torch.Tensor, tag: str) -> None:
    edit.row_rot = block if edit.row_rot is None else edit.row_rot @ block
    edit.tags.append(f"{tag} out")


def _check_sites(online: Any) -> tuple[str, ...]:
    if online in ("default", None):
        return ("linears", "kv") if online == "default" else ()
    if isinstance(online, str):
        online = (online,)
    if not isinstance(online, (tuple, list, set, frozenset)) or not all(isinstance(s, str) for s in online):
        raise TypeError(f"online: expected 'default' or a tuple of site names, got {online!r}")
    bad = sorted(set(online) - set(BERT_SITES))
    if bad:
        raise ValueError(f"online: unknown BERT site(s) {bad}; choose from {BERT_SITES}")
    return tuple(s for s in BERT_SITES if s in online)


def _online_spec(rotation: Any, n: int) -> Any:
    """The rotation spec for in_features ``n`` (a name/callable as is; sized specs must fit)."""
    if isinstance(rotation, Mapping):
        if n not in rotation:
            raise ValueError(f"rotation: no entry for in_features {n} (keys {sorted(rotation)})")
        return rotation[n]
    if isinstance(rotation, torch.Tensor) and tuple(rotation.shape) != (n, n):
        raise ValueError(
            f"rotation: a {tuple(rotation.shape)} tensor cannot rotate the inputs of in_features={n} linears; "
            "pass a name, a callable(n, seed) or a dict {in_features: spec}"
        )
    if _is_rotation(rotation) and int(rotation.n) != n:
        raise ValueError(f"rotation: a size-{rotation.n} Rotation cannot rotate in_features={n} inputs")
    return rotation


def _kv_spec(rotation: Any, head_dim: int) -> Any:
    """R3 spec: the user's rotation at head_dim if it is a name/callable or fits, else the randomized Hadamard."""
    if isinstance(rotation, str) or (
        callable(rotation) and not _is_rotation(rotation) and not isinstance(rotation, torch.Tensor)
    ):
        return rotation
    if isinstance(rotation, Mapping) and head_dim in rotation:
        return rotation[head_dim]
    if isinstance(rotation, torch.Tensor) and tuple(rotation.shape) == (head_dim, head_dim):
        return rotation
    if _is_rotation(rotation) and int(rotation.n) == head_dim:
        return rotation
    return "hadamard"


def _r2_rotation(r2: Any, head_dim: int, seed: int) -> Rotation | None:
    if r2 is False or r2 is None:
        return None
    if r2 is True:
        return _make_rotation("hadamard", head_dim, seed=derive_seed(seed, "R2"))
    if isinstance(r2, torch.Tensor) or _is_rotation(r2):
        return _make_rotation(r2, head_dim, seed=derive_seed(seed, "R2"))
    raise TypeError(
        f"r2: expected True, False, a (head_dim, head_dim) Tensor or a Rotation, got {type(r2).__name__}"
    )


def rotate_bert(
    model: nn.Module,
    rotation: str
    | torch.Tensor
    | Callable[[int, int], torch.Tensor]
    | Rotation
    | Mapping[int, Any] = "hadamard",
    *,
    seed: int = 0,
    online: Any = "default",
    r2: bool | torch.Tensor | Rotation = True,
    report: Any = None,
) -> None:
    """Rotate a BERT-family encoder in place (called by ``orthokit.rotation.rotate_model``, which checks equivalence).

    Args:
        model: ``BertModel`` or a head class (``BertForMaskedLM``, ``BertForSequenceClassification``, …); any
            encoder with BERT's module layout (RoBERTa, ELECTRA, MiniLM) works.
        rotation: spec of the online input rotations: a registry name (``"hadamard"``, ``"haar"``,
            ``"two_block_hadamard"``, ``"identity"``), a callable ``(n, seed) -> Tensor``, or — since hidden and
            intermediate sizes differ — a ``{in_features: spec}`` dict; a Tensor/Rotation is accepted when its size
            fits every wrapped linear. R3 (``"kv"``) uses a name/callable spec at ``head_dim``, otherwise the
            randomized Hadamard.
        seed: base seed; each site's seed is ``derive_seed(seed, tag)``.
        online: ``"default"`` (= ``("linears", "kv")``) or a tuple of :data:`BERT_SITES`; ``"linears"`` includes
            ``"down_proj"``.
        r2: per-head value/output rotation: ``True`` (randomized Hadamard over ``head_dim``), ``False``, a
            ``(head_dim, head_dim)`` orthogonal Tensor or a Rotation.
        report: a ``RotationReport`` (or anything with ``offline``/``online`` lists and ``skipped``/``rotations``
            dicts) to fill; ``None`` records nothing.

    Raises:
        TypeError / ValueError: bad argument (named); the model is not BERT-shaped or already rotated. Nothing is
        modified when an error is raised.
    """
    sites = _check_sites(online)
    layers = bert_layers(model)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if report is not None:
        for attr, kind in (("offline", list), ("online", list), ("skipped", dict), ("rotations", dict)):
            if not isinstance(getattr(report, attr, None), kind):
                raise TypeError(f"report: expected a RotationReport (missing {kind.__name__} {attr!r})")
    names = {id(m): n for n, m in model.named_modules()}
    order = {key: i for i, key in enumerate(names)}  # module order, for a readable report
    first = layers[0].attention.self
    heads = int(first.num_attention_heads)
    head_dim = int(first.attention_head_size)
    if heads * head_dim != first.value.out_features:
        raise ValueError(
            f"model: {heads} heads × head_dim {head_dim} != value.out_features {first.value.out_features}"
        )

    # 1. every rotation (may raise; nothing touched yet)
    rotations: dict[str, Rotation] = {}
    r2_rot = _r2_rotation(r2, head_dim, seed)
    if r2_rot is not None:
        rotations["R2"] = r2_rot
    if "kv" in sites:
        rotations["R3"] = _make_rotation(_kv_spec(rotation, head_dim), head_dim, seed=derive_seed(seed, "R3"))

    # 2. plan the edits
    edits: dict[int, _Edit] = {}

    def edit(lin: nn.Linear) -> _Edit:
        return edits.setdefault(id(lin), _Edit(names.get(id(lin), "?"), lin))

    online_targets: list[nn.Linear] = []
    for layer in layers:
        for kind in _ATTN_KINDS:
            att = getattr(layer, kind, None)
            if att is None:
                continue
            dev = att.self.value.weight.device
            if r2_rot is not None:
                block = _per_head(r2_rot.matrix(dtype=torch.float64), heads, dev)
                _per_head_rows(edit(att.self.value), block, "R2")
                _per_head_cols(edit(att.output.dense), block)
            if "R3" in rotations:
                block = _per_head(rotations["R3"].matrix(dtype=torch.float64), heads, dev)
                _per_head_rows(edit(att.self.query), block, "R3")
                _per_head_rows(edit(att.self.key), block, "R3")
            if "linears" in sites:
                online_targets += [att.self.query, att.self.key, att.self.value, att.output.dense]
        if "linears" in sites:
            online_targets.append(layer.intermediate.dense)
        if "linears" in sites or "down_proj" in sites:
            online_targets.append(layer.output.dense)
    for lin in online_targets:
        n = lin.in_features
        key = f"online_in{n}"
        if key not in rotations:
            rotations[key] = _make_rotation(_online_spec(rotation, n), n, seed=derive_seed(seed, key))
        e = edit(lin)
        e.online = rotations[key]
        e.tags.append(f"online in={n}")
    if "linears" in sites or "down_proj" in sites:
        rotations["R4"] = rotations[f"online_in{layers[0].output.dense.in_features}"]

    # 3. compute every new tensor in float64 before touching the model
    computed = {k: e.compute() for k, e in edits.items()}

    # 4. commit
    for k, e in edits.items():
        w64, b64 = computed[k]
        target = e.linear if e.online is None else copy.deepcopy(e.linear)
        with torch.no_grad():
            target.weight.copy_(w64.to(target.weight.dtype))
            if b64 is not None:
                target.bias.copy_(b64.to(target.bias.dtype))
        if e.online is not None:
            owner_name, attr = e.name.rsplit(".", 1)
            model.get_submodule(owner_name).register_module(attr, OnlineRotatedLinear(target, e.online))

    if report is not None:
        report.skipped["R1"] = R1_SKIP_REASON
        for e in sorted(edits.values(), key=lambda e: order.get(id(e.linear), 0)):
            off = [t for t in e.tags if not t.startswith("online")]
            if off:
                report.offline.append(f"{e.name} [{', '.join(off)}]")
            if e.online is not None:
                report.online.append(f"{e.name} [online in={e.linear.in_features}]")
        encoder_ids = {id(m) for layer in layers for m in layer.modules()}
        if "linears" in sites:
            for n, m in model.named_modules():
                if isinstance(m, nn.Linear) and id(m) not in encoder_ids:
                    report.skipped[n] = "outside the encoder: online='linears' wraps encoder linears only"
        report.rotations.update(rotations)
        notes = getattr(report, "notes", None)
        if "kv" in sites and isinstance(notes, list):
            notes.append(
                "bert: R3 (kv) fused offline into query/key rows per head (absolute positions: nothing sits "
                "between the projection and q·k, so no online rotation or attention hook is needed)"
            )

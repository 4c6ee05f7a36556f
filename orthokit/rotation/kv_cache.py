r"""A rotated, Lloyd–Max-quantized KV cache (TurboESM-style) usable as ``past_key_values`` in transformers.

Per layer ``ℓ`` and kv head ``h``, with ``d = head_dim``:

* **Keys** arrive post-RoPE (as the cache receives them). They are rotated ``y = k Π`` (``Π`` orthogonal, per
  layer/head), normalized per token ``u = √d · y/‖k‖`` (``‖y‖ = ‖k‖``; the norm is kept in fp16), and every
  coordinate is replaced by the index of its nearest Lloyd–Max level (``2^bits`` levels, 3 by default). The rotation
  is exact for attention: ``(q)(k̂)ᵀ`` with ``k̂ = ŷ Πᵀ`` — the cache rotates back on read, so the attention code is
  untouched (TurboESM, arXiv 2603.26110, rotates q instead; both are the identity ``(qΠ)(kΠ)ᵀ = qkᵀ``).
* **Residual correction** (keys): ``correction="sign"`` stores ``sign(u − Q(u))`` (1 bit/coordinate) and adds back
  ``α_{ℓh} · sign`` with ``α`` the mean residual magnitude (TurboESM's "QJL" variant; its README calls it QJL but it
  is not a JL projection). ``correction="qjl"`` is the real QJL (Zandieh et al., arXiv 2406.03482; the residual
  stage of TurboQuant, arXiv 2504.19874): with a Gaussian ``S ∈ R^{m×d}`` (seeded, ``m = d``) it stores
  ``sign(S r)`` and ``‖r‖`` (fp16) and reconstructs ``r̂ = √(π/2)/m · ‖r‖ · Sᵀ sign(S r)``, so
  ``⟨q, r̂⟩ = √(π/2)/m · ‖r‖ · ⟨Sq, sign(Sr)⟩`` is QJL's unbiased inner-product estimator (``E_S r̂ = r``).
  ``correction=None`` stores codes only.
* **Values** stay in their original space (TurboESM: rotating V did not help), normalized per token and quantized
  with their OWN Lloyd–Max codebook (TurboESM found one shared K/V codebook drops V's SNR from 4× to 1.9×).

Storage is genuinely packed: ``d·bits`` bits of codes per token and head in ``⌈d·bits/8⌉`` bytes (8 three-bit codes
in 3 bytes), sign bits 8 per byte, norms fp16. :meth:`RotatedQuantizedCache.nbytes` counts exactly those buffers
(plus the full-precision window); :meth:`RotatedQuantizedCache.bits_per_value` divides by the number of cached
K and V scalars, to compare with 16 (fp16 ``DynamicCache``) or 32 (fp32).

Rotations and codebooks come from a :class:`KVCalibration`: :func:`calibrate_kv_rotation` (``rotation="svd"``:
``Π = V`` from the SVD ``K = UΣVᵀ`` of the post-RoPE calibration keys of each layer/head, like TurboESM;
``"hadamard"``: a randomized Hadamard from :func:`orthokit.rotation.registry.make_rotation`; ``"identity"``: none,
the unrotated baseline) with codebooks fitted on the calibration sample, or :meth:`KVCalibration.data_free`
(no data: Hadamard + the codebook of a coordinate of a random unit vector, :func:`lloyd_max_sphere`, as TurboQuant).

Deviations from TurboESM: per-token normalization (TurboESM quantizes raw values with per-head codebooks;
``normalize=False`` reproduces that), codebooks by exact 1-D Lloyd iteration instead of scipy k-means, rotation
back on read instead of rotating q, no Triton kernel. A full-precision window of the most recent
``residual_length`` tokens (HF ``QuantizedCache`` keeps 128) is optional; the default 0 matches TurboESM, which
quantizes every token, the ones of the current step included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from orthokit.rotation.lloyd_max import LloydMaxQuantizer, fit_lloyd_max, lloyd_max_sphere

__all__ = [
    "KVCalibration",
    "RotatedQuantizedCache",
    "RotatedQuantizedLayer",
    "calibrate_kv_rotation",
    "decode_fidelity",
    "pack_bits",
    "unpack_bits",
]

_ROTATIONS = ("svd", "hadamard", "identity")
_CORRECTIONS = ("sign", "qjl", None)
_NO_QUANT_BITS = 16


# --------------------------------------------------------------------------------------------------- bit packing
def pack_bits(codes: Tensor, bits: int) -> Tensor:
    """Pack the last dim of integer ``codes`` (each ``< 2^bits``) into ``⌈n·bits/8⌉`` bytes, little-endian.

    Code ``j`` occupies bits ``j·bits … j·bits + bits − 1`` of the byte stream (8 three-bit codes fill 3 bytes).

    Example:
        >>> import torch
        >>> p = pack_bits(torch.arange(8, dtype=torch.uint8), 3)
        >>> p.shape, p.dtype, unpack_bits(p, 3, 8).tolist()
        (torch.Size([3]), torch.uint8, [0, 1, 2, 3, 4, 5, 6, 7])
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"pack_bits: bits must be an int in 1..8, got {bits!r}")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise TypeError(f"pack_bits: codes must be an integer tensor, got {codes.dtype}")
    lead, n = codes.shape[:-1], codes.shape[-1]
    c = codes.to(torch.int32)
    bit = (c.unsqueeze(-1) >> torch.arange(bits, device=c.device, dtype=torch.int32)) & 1
    stream = bit.reshape(*lead, n * bits)
    pad = (-n * bits) % 8
    if pad:
        stream = torch.nn.functional.pad(stream, (0, pad))
    stream = stream.reshape(*lead, -1, 8) << torch.arange(8, device=c.device, dtype=torch.int32)
    return stream.sum(-1).to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes of the byte stream in the last dim, as ``uint8``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"unpack_bits: bits must be an int in 1..8, got {bits!r}")
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_bits: packed must be uint8, got {packed.dtype}")
    if packed.shape[-1] * 8 < n * bits:
        raise ValueError(f"unpack_bits: {packed.shape[-1]} bytes hold fewer than n={n} codes of {bits} bits")
    p = packed.to(torch.int32)
    stream = (p.unsqueeze(-1) >> torch.arange(8, device=p.device, dtype=torch.int32)) & 1
    stream = stream.reshape(*packed.shape[:-1], -1)[..., : n * bits]
    bit = stream.reshape(*packed.shape[:-1], n, bits) << torch.arange(
        bits, device=p.device, dtype=torch.int32
    )
    return bit.sum(-1).to(torch.uint8)


# --------------------------------------------------------------------------------------------------- calibration
def _kv_dims(config: Any) -> tuple[int, int, int]:
    cfg = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    try:
        layers = int(cfg.num_hidden_layers)
        heads = int(cfg.num_attention_heads)
        kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    except AttributeError as e:
        raise TypeError(
            f"config: not a decoder config with num_hidden_layers/heads/hidden_size ({e})"
        ) from None
    return layers, kv, int(hd)


def _hadamard_q(d: int, seed: int) -> tuple[Tensor, str]:
    """Randomized Hadamard ``diag(s)·H_d`` via H2's ``make_rotation`` (fallback: same definition, local)."""
    try:
        from orthokit.rotation.registry import make_rotation
    except ImportError:  # pragma: no cover - H2's registry lands in the same round
        from orthokit.linalg import hadamard_matrix

        s = torch.randint(0, 2, (d,), generator=torch.Generator().manual_seed(seed)).to(torch.float64) * 2 - 1
        return s[:, None] * hadamard_matrix(d, dtype=torch.float64), "hadamard"
    return make_rotation("hadamard", d, seed=seed).matrix(dtype=torch.float64), "hadamard"


@dataclass
class KVCalibration:
    """Rotations and codebooks of a :class:`RotatedQuantizedCache` (all float64, per layer and kv head).

    ``k_rotation`` (layers, H, d, d): ``Π`` with rotated keys ``k Π``. ``lut_k``/``lut_v`` (layers, H, 2^bits):
    Lloyd–Max levels (ascending). ``res_k``/``res_v`` (layers, H): mean ``|u − Q(u)|`` (the sign correction's
    magnitude). ``rotation`` names how ``Π`` was made (``"svd"``, ``"hadamard"``, ``"identity"``) and ``seed`` the
    Hadamard signs' seed; ``lut`` is ``"calibrated"`` or ``"sphere"``; ``normalize`` whether per-token norms are
    divided out before quantization. ``bits == 16`` means no quantization (rotation round trip only; the LUTs
    then hold 256 placeholder levels).

    Every field is validated on construction (also by :meth:`from_state_dict`), so a hostile or corrupt state
    cannot give silently wrong attention: types; shapes ``(L, H, d, d)``, ``(L, H, 2^min(bits, 8))``,
    ``(L, H)``; each ``Π`` orthogonal in float64 (``max |ΠᵀΠ − I| ≤ 1e-5``, loose enough for a state saved in
    float32); codebooks finite and strictly increasing; residual magnitudes finite and ``≥ 0``. Tensors are
    stored as float64 on the CPU. Errors are one-line ``TypeError``/``ValueError`` naming the field.
    """

    rotation: str
    seed: int | None
    bits: int
    normalize: bool
    lut: str
    k_rotation: Tensor
    lut_k: Tensor
    lut_v: Tensor
    res_k: Tensor
    res_v: Tensor

    def __post_init__(self) -> None:
        _validate_calibration(self)

    @property
    def num_layers(self) -> int:
        """Number of decoder layers covered."""
        return int(self.k_rotation.shape[0])

    @property
    def num_kv_heads(self) -> int:
        """Number of key/value heads per layer."""
        return int(self.k_rotation.shape[1])

    @property
    def head_dim(self) -> int:
        """Per-head dimension ``d``."""
        return int(self.k_rotation.shape[-1])

    @classmethod
    def data_free(
        cls, config: Any, *, bits: int = 3, rotation: str = "hadamard", seed: int = 0
    ) -> KVCalibration:
        """No-data calibration: ``rotation`` (``"hadamard"`` or ``"identity"``) and the unit-sphere codebook.

        Every head uses the same ``Π`` and :func:`lloyd_max_sphere` levels for K and V (TurboQuant's design for
        normalized rotated vectors); ``α`` is the codebook's mean residual on 2^16 seeded sphere samples.

        Example:
            >>> from transformers import LlamaConfig
            >>> c = KVCalibration.data_free(LlamaConfig(hidden_size=64, num_attention_heads=4,
            ...                             num_key_value_heads=2, num_hidden_layers=2))
            >>> tuple(c.k_rotation.shape), tuple(c.lut_k.shape), c.rotation
            ((2, 2, 16, 16), (2, 2, 8), 'hadamard')
        """
        bits = _check_cache_bits(bits)
        if rotation not in ("hadamard", "identity"):
            raise ValueError(
                f"KVCalibration.data_free: rotation must be 'hadamard' or 'identity', got {rotation!r}"
            )
        layers, kv, d = _kv_dims(config)
        if d < 3:
            raise ValueError(
                f"KVCalibration.data_free: head_dim must be >= 3 for the sphere codebook, got {d}"
            )
        if rotation == "hadamard":
            q, rotation = _hadamard_q(d, seed)
        else:
            q = torch.eye(d, dtype=torch.float64)
        L = 1 << min(bits, 8)
        if bits == _NO_QUANT_BITS:
            levels, alpha = torch.linspace(-1.0, 1.0, L, dtype=torch.float64), 0.0
        else:
            cb = lloyd_max_sphere(bits, d)
            g = torch.randn(1 << 16, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            levels, alpha = cb.levels, cb.residual_scale(g / g.norm(dim=-1, keepdim=True) * math.sqrt(d))
        lut = levels.expand(layers, kv, L).clone()
        res = torch.full((layers, kv), alpha, dtype=torch.float64)
        return cls(rotation, seed if rotation.startswith("hadamard") else None, bits, True, "sphere",
                   q.expand(layers, kv, d, d).clone(), lut, lut.clone(), res, res.clone())  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """Tensors, ints, strs and bools only; restore with :meth:`from_state_dict`."""
        return {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> KVCalibration:
        """Inverse of :meth:`state_dict`; every field is validated (see the class docstring)."""
        if not isinstance(d, dict):
            raise TypeError(f"KVCalibration.from_state_dict: d must be a dict, got {type(d).__name__}")
        names = list(cls.__dataclass_fields__)
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"KVCalibration.from_state_dict: missing keys {missing}")
        extra = sorted(str(k) for k in d if k not in names)
        if extra:
            raise ValueError(f"KVCalibration.from_state_dict: unexpected keys {extra}")
        return cls(**{n: d[n] for n in names})


_ORTHO_TOL = 1e-5


def _float_tensor(c: KVCalibration, name: str, shape: tuple[int, ...] | None, what: str) -> Tensor:
    """Field ``name`` as a detached float64 CPU tensor, after type/shape/finiteness checks."""
    t = getattr(c, name)
    if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
        got = t.dtype if isinstance(t, Tensor) else type(t).__name__
        raise TypeError(f"KVCalibration: {name} must be a floating-point tensor, got {got}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"KVCalibration: {name} must have shape {what}={shape}, got {tuple(t.shape)}")
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"KVCalibration: {name} has non-finite entries")
    return t


def _validate_calibration(c: KVCalibration) -> None:
    """Check every field of ``c`` (one-line errors naming the field); store its tensors as float64 CPU."""
    if not isinstance(c.rotation, str) or c.rotation not in _ROTATIONS:
        raise ValueError(f"KVCalibration: rotation must be one of {_ROTATIONS}, got {c.rotation!r}")
    if c.seed is not None and (isinstance(c.seed, bool) or not isinstance(c.seed, int)):
        raise TypeError(f"KVCalibration: seed must be an int or None, got {c.seed!r}")
    if isinstance(c.bits, bool) or not isinstance(c.bits, int):
        raise TypeError(f"KVCalibration: bits must be an int, got {c.bits!r}")
    if not (1 <= c.bits <= 8 or c.bits == _NO_QUANT_BITS):
        raise ValueError(f"KVCalibration: bits must be in 1..8, or 16 for no quantization, got {c.bits}")
    if not isinstance(c.normalize, bool):
        raise TypeError(f"KVCalibration: normalize must be a bool, got {c.normalize!r}")
    if not isinstance(c.lut, str) or c.lut not in ("calibrated", "sphere"):
        raise ValueError(f"KVCalibration: lut must be 'calibrated' or 'sphere', got {c.lut!r}")
    if c.lut == "sphere" and not c.normalize:
        raise ValueError("KVCalibration: lut='sphere' needs normalize=True (it models unit vectors)")
    q = _float_tensor(c, "k_rotation", None, "")
    if q.dim() != 4 or q.shape[-1] != q.shape[-2] or 0 in q.shape:
        raise ValueError(
            f"KVCalibration: k_rotation must have shape (layers, kv heads, d, d), got {tuple(q.shape)}"
        )
    n_l, n_h, d = q.shape[0], q.shape[1], q.shape[-1]
    dev = float((q.transpose(-1, -2) @ q - torch.eye(d, dtype=torch.float64)).abs().amax())
    if dev > _ORTHO_TOL:
        raise ValueError(
            f"KVCalibration: k_rotation is not orthogonal per head (max |QᵀQ − I| = {dev:.3g} > {_ORTHO_TOL})"
        )
    n_lv = 1 << min(c.bits, 8)
    luts = {}
    for name in ("lut_k", "lut_v"):
        lv = _float_tensor(c, name, (n_l, n_h, n_lv), "(layers, kv heads, 2^min(bits, 8))")
        if not bool((lv[..., 1:] > lv[..., :-1]).all()):
            raise ValueError(f"KVCalibration: {name} levels must be strictly increasing per head")
        luts[name] = lv
    res = {}
    for name in ("res_k", "res_v"):
        r = _float_tensor(c, name, (n_l, n_h), "(layers, kv heads)")
        if not bool((r >= 0).all()):
            raise ValueError(f"KVCalibration: {name} (mean residual magnitudes) must be >= 0")
        res[name] = r
    c.k_rotation = q
    for name, t in {**luts, **res}.items():
        setattr(c, name, t)


def _check_cache_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not (1 <= bits <= 8 or bits == _NO_QUANT_BITS):
        raise ValueError(f"bits must be an int in 1..8, or 16 for no quantization, got {bits!r}")
    return bits


def _as_batches(calib: Any) -> list[Tensor]:
    items = (
        [calib] if isinstance(calib, Tensor) else list(calib) if isinstance(calib, (list, tuple)) else None
    )
    if not items:
        raise TypeError("calib must be a LongTensor of token ids (batch, seq) or a non-empty list of them")
    out = []
    for t in items:
        if not isinstance(t, Tensor) or t.dtype not in (torch.int64, torch.int32) or t.dim() not in (1, 2):
            raise TypeError("calib must hold integer token-id tensors of shape (seq,) or (batch, seq)")
        out.append(t.reshape(1, -1) if t.dim() == 1 else t)
    return out


@torch.no_grad()
def _collect_kv(model: Any, batches: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Post-RoPE keys and values per layer, as the cache receives them: lists of (H, N, d) float64."""
    ks: list[list[Tensor]] = []
    vs: list[list[Tensor]] = []
    dev = next(model.parameters()).device
    for ids in batches:
        cache = DynamicCache(config=model.config)
        model(input_ids=ids.to(dev), cache=cache, use_cache=True)
        for i, layer in enumerate(cache.layers):
            if len(ks) <= i:
                ks.append([])
                vs.append([])
            for store, t in ((ks[i], layer.keys), (vs[i], layer.values)):
                store.append(
                    t.detach().to(torch.float64).cpu().transpose(0, 1).reshape(t.shape[1], -1, t.shape[-1])
                )
    return [torch.cat(k, 1) for k in ks], [torch.cat(v, 1) for v in vs]


def _normalized(x: Tensor, normalize: bool) -> Tensor:
    if not normalize:
        return x
    n = x.norm(dim=-1, keepdim=True)
    return torch.where(n > 0, x * (math.sqrt(x.shape[-1]) / n.clamp_min(1e-300)), torch.zeros_like(x))


def calibrate_kv_rotation(
    model: Any,
    calib: Tensor | list[Tensor],
    *,
    rotation: str = "svd",
    bits: int = 3,
    seed: int = 0,
    normalize: bool = True,
    lut: str = "calibrated",
) -> KVCalibration:
    """Fit the cache's rotations and codebooks on the post-RoPE K/V of ``calib`` (TurboESM's calibration).

    ``rotation="svd"``: per layer/head ``Π = V`` from ``K = UΣVᵀ`` (uncentered keys of all calibration tokens);
    ``"hadamard"``: one randomized Hadamard of order ``head_dim`` (``seed``); ``"identity"``: unrotated. Codebooks
    (``lut="calibrated"``): :func:`fit_lloyd_max` per layer/head on the (normalized) rotated keys and, separately,
    on the (normalized) values in their original space; ``lut="sphere"``: the data-free unit-sphere codebook.
    The model is only read (one no-grad forward per calibration batch).

    Raises:
        TypeError: ``calib`` not integer token ids.
        ValueError: unknown ``rotation``/``lut``, bad ``bits``, fewer calibration tokens than ``head_dim`` for SVD.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
        ...                      num_key_value_heads=1, num_hidden_layers=1, vocab_size=50)).eval()
        >>> cal = calibrate_kv_rotation(m, torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(0)))
        >>> cal.rotation, tuple(cal.k_rotation.shape), tuple(cal.lut_v.shape)
        ('svd', (1, 1, 16, 16), (1, 1, 8))
    """
    bits = _check_cache_bits(bits)
    if rotation not in _ROTATIONS:
        raise ValueError(f"calibrate_kv_rotation: rotation must be one of {_ROTATIONS}, got {rotation!r}")
    if lut not in ("calibrated", "sphere"):
        raise ValueError(f"calibrate_kv_rotation: lut must be 'calibrated' or 'sphere', got {lut!r}")
    if lut == "sphere" and not normalize:
        raise ValueError("calibrate_kv_rotation: lut='sphere' needs normalize=True (it models unit vectors)")
    keys, values = _collect_kv(model, _as_batches(calib))
    d = keys[0].shape[-1]
    if rotation == "svd" and keys[0].shape[1] < d:
        raise ValueError(
            f"calibrate_kv_rotation: calib has {keys[0].shape[1]} tokens, SVD needs >= head_dim={d}"
        )
    had = _hadamard_q(d, seed) if rotation == "hadamard" else None
    sphere = lloyd_max_sphere(bits, d) if lut == "sphere" and bits != _NO_QUANT_BITS else None
    rots, luts_k, luts_v, res_k, res_v = [], [], [], [], []
    for k, v in zip(keys, values):
        for h in range(k.shape[0]):
            if rotation == "svd":
                q = torch.linalg.svd(k[h], full_matrices=False).Vh.T
            else:
                q = had[0] if had is not None else torch.eye(d, dtype=torch.float64)
            rots.append(q)
            for x, luts, res in ((k[h] @ q, luts_k, res_k), (v[h], luts_v, res_v)):
                u = _normalized(x, normalize)
                if bits == _NO_QUANT_BITS:
                    cb = LloydMaxQuantizer(torch.linspace(-1.0, 1.0, 256, dtype=torch.float64))
                else:
                    cb = sphere if sphere is not None else fit_lloyd_max(u, bits)
                luts.append(cb.levels)
                res.append(cb.residual_scale(u))
    n_l, n_h = len(keys), keys[0].shape[0]
    return KVCalibration(
        rotation=had[1] if had is not None else rotation,
        seed=seed if had is not None else None,
        bits=bits,
        normalize=normalize,
        lut=lut,
        k_rotation=torch.stack(rots).reshape(n_l, n_h, d, d),
        lut_k=torch.stack(luts_k).reshape(n_l, n_h, -1),
        lut_v=torch.stack(luts_v).reshape(n_l, n_h, -1),
        res_k=torch.tensor(res_k, dtype=torch.float64).reshape(n_l, n_h),
        res_v=torch.tensor(res_v, dtype=torch.float64).reshape(n_l, n_h),
    )


# --------------------------------------------------------------------------------------------------- cache layers
class RotatedQuantizedLayer(DynamicLayer):
    """One decoder layer's packed cache (see the module docstring); built by :class:`RotatedQuantizedCache`.

    Tokens older than the ``residual_length`` most recent ones live only as packed codes/signs/fp16 norms in
    ``self.store`` (dict of tensors, batch first, tokens on dim 2); ``self.keys``/``self.values`` hold the
    full-precision window. ``update`` returns the dequantized keys (rotated back) and values, then the window.
    """

    is_croppable = False

    def __init__(
        self,
        calibration: KVCalibration,
        layer_idx: int,
        *,
        correction: str | None,
        correct_values: bool,
        residual_length: int,
        qjl_matrix: Tensor | None,
    ) -> None:
        super().__init__()
        c = calibration
        self.bits, self.normalize = c.bits, c.normalize
        self.correction, self.correct_values, self.residual_length = (
            correction,
            correct_values,
            residual_length,
        )
        self._params64 = {
            "q": c.k_rotation[layer_idx],
            "lut_k": c.lut_k[layer_idx],
            "lut_v": c.lut_v[layer_idx],
            "res_k": c.res_k[layer_idx],
            "res_v": c.res_v[layer_idx],
        }
        if qjl_matrix is not None:
            self._params64["s"] = qjl_matrix
        self.cumulative_length = 0
        self.store: dict[str, Tensor] = {}

    # -- transformers CacheLayerMixin protocol
    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        """Record device/dtype, move the rotation and codebooks there (fp32, fp64 for fp64 states)."""
        self.device, self.dtype = key_states.device, key_states.dtype
        ct = torch.float64 if key_states.dtype == torch.float64 else torch.float32
        self._p = {k: v.to(device=self.device, dtype=ct) for k, v in self._params64.items()}
        self._p["thr_k"] = 0.5 * (self._p["lut_k"][:, 1:] + self._p["lut_k"][:, :-1])
        self._p["thr_v"] = 0.5 * (self._p["lut_v"][:, 1:] + self._p["lut_v"][:, :-1])
        self.keys = key_states[..., :0, :].clone()
        self.values = value_states[..., :0, :].clone()
        self.is_initialized = True

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        """Append the new states (quantizing whatever leaves the window); return all keys and values."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        wk = torch.cat([self.keys, key_states], dim=-2)
        wv = torch.cat([self.values, value_states], dim=-2)
        spill = wk.shape[-2] - self.residual_length
        if spill > 0:  # encode first: a failure (e.g. fp16 norm overflow) leaves the cache untouched
            enc = self._encode(wk[..., :spill, :], wv[..., :spill, :])
            self.store = {
                n: torch.cat([self.store[n], t], dim=2) if n in self.store else t for n, t in enc.items()
            }
            wk, wv = wk[..., spill:, :], wv[..., spill:, :]
        self.cumulative_length += key_states.shape[-2]
        self.keys, self.values = wk, wv
        kq, vq = self._decode()
        return torch.cat([kq.to(self.dtype), wk], dim=-2), torch.cat([vq.to(self.dtype), wv], dim=-2)

    def get_seq_length(self) -> int:
        """Number of cached tokens (quantized + window)."""
        return self.cumulative_length

    def reset(self) -> None:
        """Drop every cached token (the calibration is kept)."""
        super().reset()
        self.store = {}
        self.cumulative_length = 0

    def crop(self, tokens_to_remove: int) -> None:
        """Not supported (packed tokens cannot be rolled back into the window)."""
        raise ValueError("RotatedQuantizedCache does not support crop (assisted/speculative decoding)")

    def _map(self, fn: Any) -> None:
        self.store = {n: fn(t) for n, t in self.store.items()}
        if self.is_initialized:
            self.keys, self.values = fn(self.keys), fn(self.values)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: reorder the batch dim of every packed buffer and of the window."""
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every buffer ``repeats`` times along the batch dim."""
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        """Keep only the batch rows ``indices``."""
        self._map(lambda t: t[indices, ...])

    # -- accounting
    def nbytes(self) -> int:
        """Bytes held: packed codes, sign bits, fp16 norms and the full-precision window."""
        held = list(self.store.values()) + ([self.keys, self.values] if self.is_initialized else [])
        return int(sum(t.numel() * t.element_size() for t in held))

    def num_values(self) -> int:
        """Number of cached K and V scalars (2·batch·heads·tokens·head_dim)."""
        if not self.is_initialized:
            return 0
        b, h, _, d = self.keys.shape
        return 2 * b * h * self.cumulative_length * d

    # -- codec
    def _rotate(self, k: Tensor) -> Tensor:
        return torch.einsum("bhtd,hde->bhte", k, self._p["q"])

    def _unrotate(self, y: Tensor) -> Tensor:
        return torch.einsum("bhte,hde->bhtd", y, self._p["q"])

    def _lookup(self, codes: Tensor, lut: Tensor) -> Tensor:
        n_h, L = lut.shape
        offs = (torch.arange(n_h, device=codes.device) * L).view(1, n_h, 1, 1)
        return lut.reshape(-1)[codes.long() + offs]

    def _encode_part(self, x: Tensor, tag: str, correct: bool) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        if self.normalize:
            n = x.norm(dim=-1)
            if bool((n > 65504.0).any()):
                raise ValueError(
                    f"RotatedQuantizedCache: a {tag.upper()} norm exceeds the fp16 range used to store it"
                )
            out[f"{tag}_norm"] = n.to(torch.float16)
            x = _normalized(x, True)
        thr = self._p[f"thr_{tag}"]
        codes = torch.stack(
            [torch.bucketize(x[:, h].contiguous(), thr[h], right=True) for h in range(x.shape[1])], 1
        )
        out[f"{tag}_codes"] = pack_bits(codes, self.bits)
        if correct:
            r = x - self._lookup(codes, self._p[f"lut_{tag}"])
            if self.correction == "sign":
                out[f"{tag}_sign"] = pack_bits((r >= 0).to(torch.uint8), 1)
            else:
                out[f"{tag}_qjl"] = pack_bits((r @ self._p["s"].T >= 0).to(torch.uint8), 1)
                out[f"{tag}_rnorm"] = r.norm(dim=-1).to(torch.float16)
        return out

    def _decode_part(self, tag: str, correct: bool, d: int) -> Tensor:
        st, ct = self.store, self._p["q"].dtype
        x = self._lookup(unpack_bits(st[f"{tag}_codes"], self.bits, d), self._p[f"lut_{tag}"])
        if correct and self.correction == "sign":
            sgn = unpack_bits(st[f"{tag}_sign"], 1, d).to(ct) * 2 - 1
            x = x + sgn * self._p[f"res_{tag}"].view(1, -1, 1, 1)
        elif correct:
            s = self._p["s"]
            sgn = unpack_bits(st[f"{tag}_qjl"], 1, s.shape[0]).to(ct) * 2 - 1
            scale = math.sqrt(math.pi / 2) / s.shape[0] * st[f"{tag}_rnorm"].to(ct).unsqueeze(-1)
            x = x + scale * (sgn @ s)
        if self.normalize:
            x = x * (st[f"{tag}_norm"].to(ct).unsqueeze(-1) / math.sqrt(d))
        return x

    def _encode(self, k: Tensor, v: Tensor) -> dict[str, Tensor]:
        ct = self._p["q"].dtype
        y = self._rotate(k.to(ct))
        if self.bits == _NO_QUANT_BITS:
            return {"k_rot": y.to(k.dtype), "v": v.clone()}
        enc = self._encode_part(y, "k", self.correction is not None)
        enc.update(self._encode_part(v.to(ct), "v", self.correction is not None and self.correct_values))
        return enc

    def _decode(self) -> tuple[Tensor, Tensor]:
        if not self.store:
            return self.keys[..., :0, :], self.values[..., :0, :]
        ct = self._p["q"].dtype
        if self.bits == _NO_QUANT_BITS:
            return self._unrotate(self.store["k_rot"].to(ct)), self.store["v"]
        d = self.keys.shape[-1]
        k = self._unrotate(self._decode_part("k", self.correction is not None, d))
        v = self._decode_part("v", self.correction is not None and self.correct_values, d)
        return k, v


class RotatedQuantizedCache(Cache):
    """A transformers ``Cache`` of rotated, Lloyd–Max-quantized, bit-packed keys and values (module docstring).

    Args:
        config: the model's config (decoder: ``num_hidden_layers``, heads, kv heads, ``head_dim``).
        calibration: a :class:`KVCalibration` (from :func:`calibrate_kv_rotation`); ``None`` builds
            :meth:`KVCalibration.data_free` with ``bits`` (default 3), ``rotation`` and ``seed``.
        bits: 1..8, or 16 for no quantization (rotation round trip only). Must match ``calibration.bits``.
        rotation, seed: used only without ``calibration`` (``"hadamard"`` or ``"identity"``).
        correction: ``"sign"`` (TurboESM's residual sign × mean magnitude), ``"qjl"`` (Gaussian JL sign bits +
            residual norm, unbiased; ``S`` drawn from ``seed``) or ``None``.
        correct_values: apply the correction to V too (TurboESM: keys only, the default).
        residual_length: most recent tokens kept in full precision (default 0 = TurboESM, all quantized).

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
        ...                      num_key_value_heads=1, num_hidden_layers=1, vocab_size=50)).eval()
        >>> cache = RotatedQuantizedCache(m.config)
        >>> out = m.generate(torch.tensor([[1, 5, 7]]), max_new_tokens=4, do_sample=False, cache=cache)
        >>> out.shape, cache.get_seq_length(), round(cache.bits_per_value(), 3)
        (torch.Size([1, 7]), 6, 4.5)
    """

    def __init__(
        self,
        config: Any,
        calibration: KVCalibration | None = None,
        *,
        bits: int | None = None,
        rotation: str = "hadamard",
        seed: int = 0,
        correction: str | None = "sign",
        correct_values: bool = False,
        residual_length: int = 0,
    ) -> None:
        layers_n, kv, d = _kv_dims(config)
        if correction not in _CORRECTIONS:
            raise ValueError(
                f"RotatedQuantizedCache: correction must be one of {_CORRECTIONS}, got {correction!r}"
            )
        if isinstance(residual_length, bool) or not isinstance(residual_length, int) or residual_length < 0:
            raise ValueError(
                f"RotatedQuantizedCache: residual_length must be an int >= 0, got {residual_length!r}"
            )
        if calibration is None:
            calibration = KVCalibration.data_free(
                config, bits=3 if bits is None else bits, rotation=rotation, seed=seed
            )
        elif not isinstance(calibration, KVCalibration):
            raise TypeError(
                f"RotatedQuantizedCache: calibration must be a KVCalibration, got {type(calibration)}"
            )
        elif bits is not None and bits != calibration.bits:
            raise ValueError(
                f"RotatedQuantizedCache: bits={bits} differs from calibration.bits={calibration.bits}"
            )
        got = (calibration.num_layers, calibration.num_kv_heads, calibration.head_dim)
        if got != (layers_n, kv, d):
            raise ValueError(f"RotatedQuantizedCache: calibration (layers, kv heads, head_dim)={got} != config's "
                             f"{(layers_n, kv, d)}")  # fmt: skip
        s = None
        if correction == "qjl":
            s = torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.calibration, self.correction, self.seed = calibration, correction, seed
        layers = [
            RotatedQuantizedLayer(
                calibration,
                i,
                correction=correction,
                correct_values=correct_values,
                residual_length=residual_length,
                qjl_matrix=s,
            )
            for i in range(layers_n)
        ]
        super().__init__(layers=layers)

    def nbytes(self) -> int:
        """Bytes held by every layer's packed buffers and windows (rotations/codebooks excluded: per-model)."""
        return sum(layer.nbytes() for layer in self.layers)

    def metadata_nbytes(self) -> int:
        """Bytes of the per-layer rotations and codebooks at their compute precision (fp32), fixed per model."""
        c = self.calibration
        return 4 * (
            c.k_rotation.numel() + c.lut_k.numel() + c.lut_v.numel() + c.res_k.numel() + c.res_v.numel()
        )

    def num_values(self) -> int:
        """Number of cached K and V scalars over all layers."""
        return sum(layer.num_values() for layer in self.layers)

    def bits_per_value(self) -> float:
        """``8·nbytes() / num_values()`` (16 for an fp16 ``DynamicCache``, 32 for fp32); nan when empty."""
        n = self.num_values()
        return 8.0 * self.nbytes() / n if n else float("nan")

    def dense_nbytes(self, dtype: torch.dtype = torch.float16) -> int:
        """Bytes a ``DynamicCache`` in ``dtype`` would hold for the same tokens."""
        return self.num_values() * torch.empty((), dtype=dtype).element_size()


@torch.no_grad()
def decode_fidelity(
    model: Any, ids: Tensor, cache: Cache, reference: Tensor | None = None
) -> dict[str, float]:
    """Teacher-forced token-by-token decode of ``ids`` with ``cache`` against an fp ``DynamicCache``.

    Feeds ``ids[:, t]`` one step at a time (every step reads the cache), and compares the logits of steps
    ``1 … T−1`` with the reference ones (computed with a fresh ``DynamicCache`` unless ``reference``, shape
    (batch, T, vocab), is given): mean cosine, top-1 agreement, mean KL(ref ‖ cache), all as floats.

    Example:
        >>> import torch
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
        ...                      num_key_value_heads=1, num_hidden_layers=1, vocab_size=50)).eval()
        >>> ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
        >>> r = decode_fidelity(m, ids, RotatedQuantizedCache(m.config, bits=16))
        >>> round(r["cosine"], 6), r["top1"]
        (1.0, 1.0)
    """
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError("decode_fidelity: ids must be an integer tensor of shape (batch, seq)")
    if ids.shape[1] < 2:
        raise ValueError(f"decode_fidelity: ids needs at least 2 tokens, got {ids.shape[1]}")

    def run(c: Cache) -> Tensor:
        steps = [
            model(input_ids=ids[:, t : t + 1], cache=c, use_cache=True).logits[:, 0]
            for t in range(ids.shape[1])
        ]
        return torch.stack(steps, 1).to(torch.float64)

    ref = run(DynamicCache(config=model.config)) if reference is None else reference.to(torch.float64)
    got = run(cache)
    ref, got = ref[:, 1:], got[:, 1:]
    lp, lq = ref.log_softmax(-1), got.log_softmax(-1)
    return {
        "cosine": float(torch.nn.functional.cosine_similarity(got, ref, dim=-1).mean()),
        "top1": float((got.argmax(-1) == ref.argmax(-1)).to(torch.float64).mean()),
        "kl": float((lp.exp() * (lp - lq)).sum(-1).mean()),
    }

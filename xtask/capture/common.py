"""Shared helpers of the golden capture: tensor encoding, seeding, observer descriptions.

The JSON layout is specified in golden/README.md (format `qparity-golden/1`).
"""

import numpy as np
import torch

FORMAT = "qparity-golden/1"

_QDTYPE_NAMES = {
    torch.quint8: "quint8",
    torch.qint8: "qint8",
    torch.qint32: "qint32",
    torch.uint8: "uint8",
    torch.int8: "int8",
    torch.int32: "int32",
}

_QSCHEME_NAMES = {
    torch.per_tensor_affine: "per_tensor_affine",
    torch.per_tensor_symmetric: "per_tensor_symmetric",
    torch.per_channel_affine: "per_channel_affine",
    torch.per_channel_symmetric: "per_channel_symmetric",
    torch.per_channel_affine_float_qparams: "per_channel_affine_float_qparams",
}


def dtype_name(dt):
    return _QDTYPE_NAMES[dt]


def qscheme_name(qs):
    return _QSCHEME_NAMES[qs]


# Tensors with more elements than this are stored compactly: "z" = base64 of the zlib stream of
# the elements' little-endian bytes (lossless); smaller ones stay readable (hex bits / integers).
COMPACT_OVER = 64
_LE = {np.float32: ("f32", "<f4"), np.float64: ("f64", "<f8"), np.uint8: ("u8", "u1"), np.int8: ("i8", "i1"),
       np.int32: ("i32", "<i4"), np.int64: ("i64", "<i8"), np.bool_: ("bool", "u1")}


def tensor(t):
    """Encode a tensor (torch or numpy) as a format tensor object.

    f32/f64 go through their raw bit patterns (never decimal strings): big-endian hex, or the
    compact "z" payload for tensors of more than COMPACT_OVER elements. Quantized torch tensors are
    rejected: callers must pass `int_repr()` explicitly.
    """
    import base64
    import zlib

    if isinstance(t, torch.Tensor):
        if t.is_quantized:
            raise TypeError("encode int_repr() of quantized tensors explicitly")
        a = t.detach().cpu().contiguous().numpy()
    else:
        a = np.ascontiguousarray(t)
    shape = list(a.shape)
    if a.size > COMPACT_OVER:
        for np_t, (name, le) in _LE.items():
            if a.dtype == np_t:
                raw = a.astype(le).tobytes()
                return {"dtype": name, "shape": shape, "z": base64.b64encode(zlib.compress(raw, 9)).decode("ascii")}
    if a.dtype == np.float32:
        return {"dtype": "f32", "shape": shape, "hex": a.view(np.uint32).astype(">u4").tobytes().hex()}
    if a.dtype == np.float64:
        return {"dtype": "f64", "shape": shape, "hex": a.view(np.uint64).astype(">u8").tobytes().hex()}
    names = {np.uint8: "u8", np.int8: "i8", np.int32: "i32", np.int64: "i64", np.bool_: "bool"}
    for np_t, name in names.items():
        if a.dtype == np_t:
            return {"dtype": name, "shape": shape, "data": [int(v) for v in a.reshape(-1).tolist()]}
    raise TypeError(f"unsupported dtype {a.dtype}")


def f32_exact(x):
    """True when the Python float x is exactly representable as an f32."""
    return float(np.float32(x)) == x


def case_rng(seed, index):
    """Per-case stream (see rng.py) and torch seed: the draw depends on (seed, case index) only,
    and is the same on every CPU."""
    from rng import Rng

    torch.manual_seed((seed * 1_000_003 + index) % (2**63))
    return Rng(seed, index)


# ---------------------------------------------------------------------------------------------
# Observer descriptions

_KWARG_KEYS = ["dtype", "qscheme", "reduce_range", "quant_min", "quant_max", "eps",
               "averaging_constant", "ch_axis", "bins"]


def _kw_value(k, v):
    if v is None:
        return None
    if k == "dtype":
        return dtype_name(v)
    if k == "qscheme":
        return qscheme_name(v)
    if k == "eps":
        return float(v)
    if k == "reduce_range":
        return bool(v)
    return int(v) if k != "averaging_constant" else float(v)


def describe_observer(cls, kwargs, instance):
    """Describe an observer or fake-quant: class, the kwargs PyTorch was given, what it resolved.

    `cls`/`kwargs`: the (outer) class and keyword arguments as passed (for a fake-quant, its
    `observer=` class is the observer class). `instance`: the constructed object.
    """
    from torch.ao.quantization.fake_quantize import FakeQuantizeBase

    kwargs = dict(kwargs)
    fake_quant = None
    obs = instance
    obs_cls = cls
    if issubclass(cls, FakeQuantizeBase):
        fake_quant = cls.__name__
        obs_cls = kwargs.pop("observer", None) or type(instance.activation_post_process)
        obs = instance.activation_post_process
    unknown = set(kwargs) - set(_KWARG_KEYS)
    if unknown:
        raise ValueError(f"observer kwargs not covered by the format: {sorted(unknown)}")
    desc_kwargs = {k: _kw_value(k, kwargs.get(k)) for k in _KWARG_KEYS}
    resolved = {}
    if hasattr(obs, "dtype"):
        resolved["dtype"] = dtype_name(obs.dtype)
    if hasattr(obs, "qscheme"):
        resolved["qscheme"] = qscheme_name(obs.qscheme)
    for k in ["quant_min", "quant_max"]:
        if hasattr(obs, k):
            resolved[k] = int(getattr(obs, k))
    if hasattr(obs, "has_customized_qrange"):
        resolved["has_customized_qrange"] = bool(obs.has_customized_qrange)
    if hasattr(obs, "reduce_range"):
        resolved["reduce_range"] = bool(obs.reduce_range)
    if hasattr(obs, "eps"):
        eps = obs.eps
        resolved["eps"] = float(eps.item() if isinstance(eps, torch.Tensor) else eps)
    if hasattr(obs, "averaging_constant"):
        resolved["averaging_constant"] = float(obs.averaging_constant)
    if hasattr(obs, "ch_axis"):
        resolved["ch_axis"] = int(obs.ch_axis)
    if hasattr(obs, "bins"):
        resolved["bins"] = int(obs.bins)
    if fake_quant is not None:
        if int(instance.quant_min) != resolved["quant_min"] or int(instance.quant_max) != resolved["quant_max"]:
            raise AssertionError("fake-quant range differs from its observer's range")
    return {"class": obs_cls.__name__, "fake_quant": fake_quant, "kwargs": desc_kwargs,
            "resolved": resolved}


def describe_partial(partial):
    """Describe a qconfig entry (a `.with_args` partial) by instantiating it once."""
    p = partial.p
    return describe_observer(p.func, p.keywords, partial())


def f32_walk(v0, steps):
    """v0 (rounded to f32) and its f32 neighbours, nearest first, `steps` on each side: the
    pins' search near a rounding tie."""
    v = np.float32(v0)
    up, down = v, v
    yield v
    for _ in range(steps):
        up = np.nextafter(up, np.float32(np.inf))
        down = np.nextafter(down, np.float32(-np.inf))
        yield up
        yield down


def half_away(q):
    """q rounded to an integer, halfway cases away from zero (the pins' alternative to RNE)."""
    return float(np.sign(q) * np.floor(abs(float(q)) + 0.5))

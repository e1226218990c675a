"""Helpers shared by the loss modules: input checks, dtype, broadcasting, masked statistics.

Private to `rljax.losses`; the public reductions live in `aggregation.py`.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp


def as_float(x):
    """`x` as an array of at least float32 (bfloat16 logps are upcast, float64 kept)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_choice(name, value, choices):
    """Raise ValueError unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")


def check_shapes(ndim=None, **arrays):
    """Raise ValueError unless every array given (None skipped) has the same shape (and `ndim`)."""
    shapes = {k: jnp.shape(v) for k, v in arrays.items() if v is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {', '.join(f'{k} {s}' for k, s in shapes.items())}")
    if ndim is not None:
        for k, s in shapes.items():
            if len(s) != ndim:
                raise ValueError(f"{k} must have {ndim} dimensions, got shape {s}")


def is_number(value):
    """True for a Python (or NumPy scalar) number, False for arrays and tracers: hyperparameter
    checks run on numbers only, so a hyperparameter may also be swept under jit or vmap."""
    return isinstance(value, numbers.Real)


def check_range(name, value, low=None, high=None, low_open=False):
    """Raise ValueError if a Python number lies outside [low, high] ((low, high] if low_open)."""
    if not is_number(value):
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        lo = f"{'(' if low_open else '['}{low if low is not None else '-inf'}"
        raise ValueError(f"{name} must lie in {lo}, {high if high is not None else 'inf'}], got {value}")


def per_token(x, mask, name="advantages"):
    """Broadcast a per-sequence array [B] to per-token [B, T]; pass a [B, T] array through."""
    x = as_float(x)
    if x.shape == mask.shape:
        return x
    if x.shape == mask.shape[:-1]:
        return jnp.broadcast_to(x[..., None], mask.shape)
    raise ValueError(f"{name} must have shape {mask.shape[:-1]} or {mask.shape}, got {x.shape}")


def safe_div(num, den):
    """num / den, with 0 where den == 0 (an all-masked batch gives 0, not NaN)."""
    return num / jnp.where(den == 0, 1, den)


def masked_sum(x, mask, axis=None):
    """sum(x·m) over `axis`; a masked position contributes 0 even where x is inf or NaN."""
    m = jnp.asarray(mask, x.dtype)
    return jnp.sum(jnp.where(m != 0, x * m, 0), axis=axis)


def masked_mean(x, mask, axis=None):
    """sum(x·m) / sum(m) over `axis`; 0 where there is no real token."""
    return safe_div(masked_sum(x, mask, axis), jnp.sum(jnp.asarray(mask, x.dtype), axis=axis))


def masked_moments(x, mask=None, ddof=1):
    """(mean, variance) of x over the real positions; variance with `ddof` (Bessel by default)."""
    x = as_float(x)
    m = jnp.ones_like(x) if mask is None else jnp.asarray(mask, x.dtype)
    n = jnp.sum(m)
    mean = safe_div(masked_sum(x, m), n)
    var = safe_div(masked_sum(jnp.square(x - mean), m), jnp.maximum(n - ddof, 0))
    return mean, var


def masked_max(x, mask):
    """max of x over the real positions (-inf where there is none)."""
    return jnp.max(jnp.where(mask, x, -jnp.inf))


def masked_min(x, mask):
    """min of x over the real positions (+inf where there is none)."""
    return jnp.min(jnp.where(mask, x, jnp.inf))


def stop_metrics(metrics):
    """Metrics carry no gradient."""
    return jax.tree_util.tree_map(jax.lax.stop_gradient, metrics)

"""Rotary position embeddings (Su et al. 2021, "RoFormer"), with the scalings of Llama 3 and Gemma 3.

Rotation pairs dimension i with i + H/2 ("rotate half"), the layout used by the Hugging Face
checkpoints of every supported family.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from rljax.models.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """inv_freq_i = theta^(-2i/H) for i < H/2, then scaled. Returns float64 [H/2] (a constant)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is None:
        return inv_freq
    if scaling.kind == "linear":
        return inv_freq / scaling.factor
    if scaling.kind == "llama3":
        # Llama 3.1: keep short wavelengths, divide long ones by `factor`, interpolate between.
        wavelength = 2 * math.pi / inv_freq
        low_freq_wavelength = scaling.original_max_position / scaling.low_freq_factor
        high_freq_wavelength = scaling.original_max_position / scaling.high_freq_factor
        smooth = (scaling.original_max_position / wavelength - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        interpolated = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
        return np.where(
            wavelength < high_freq_wavelength,
            inv_freq,
            np.where(wavelength > low_freq_wavelength, inv_freq / scaling.factor, interpolated),
        )
    raise ValueError(f"unknown RoPE scaling kind {scaling.kind!r}")


def rope_angles(positions: jnp.ndarray, inv_freq: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """positions [B, T] int -> (sin, cos), each float32 [B, T, H/2]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    return jnp.sin(angles), jnp.cos(angles)


def apply_rope(x: jnp.ndarray, sin: jnp.ndarray, cos: jnp.ndarray) -> jnp.ndarray:
    """Rotates x [B, T, heads, H] by the angles (sin, cos) [B, T, H/2]; computed in float32."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    sin, cos = sin[:, :, None, :], cos[:, :, None, :]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)

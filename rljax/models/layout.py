"""Conversion between the per-layer parameter layout (`layers_0`, `layers_1`, ...) and the
scanned layout (`layers`, every leaf stacked on a leading L axis), used with `scan_layers`."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def stack_layers(params: dict, n_layers: int) -> dict:
    """{'layers_0': t0, ..., 'layers_{L-1}': t} -> {'layers': stacked}, other entries unchanged."""
    per_layer = [params[f"layers_{i}"] for i in range(n_layers)]
    rest = {k: v for k, v in params.items() if not k.startswith("layers_")}
    return {**rest, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)}


def unstack_layers(params: dict, n_layers: int) -> dict:
    """The inverse of `stack_layers`."""
    rest = {k: v for k, v in params.items() if k != "layers"}
    layers = {f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], params["layers"]) for i in range(n_layers)}
    return {**rest, **layers}

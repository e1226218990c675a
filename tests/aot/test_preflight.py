"""Reading compiled HLO (collectives, bytes per loop iteration) and the HBM preflight's error."""

import os

import jax
import pytest

from rljax import models
from rljax.train import preflight
from rljax.train.config import RLConfig

pytestmark = pytest.mark.skipif(os.environ.get("RLJAX_AOT") != "1",
                                reason="runs in its own process with libtpu: tests/test_aot.py")

# The shape of XLA:TPU's output: a prefill's layer scan, then the token loop (stops on data)
# around a layer scan (a counter to 3) that all-gathers 1 KiB per layer, a reduce-scatter written
# as an all-reduce-scatter fusion.
HLO = """HloModule m

%layer_cond (p: (s32[])) -> pred[] {
  %i = s32[] get-tuple-element(%p), index=0
  %constant.1 = s32[]{:T(128)} constant(3)
  ROOT %compare.1 = pred[] compare(%i, %constant.1), direction=LT
}

%gather_fusion (x: bf16[128,2]) -> bf16[128,4] {
  ROOT %all-gather.1 = bf16[128,4]{1,0} all-gather(%x), dimensions={1}
}

%layer_body (p: (s32[])) -> (s32[]) {
  %fusion.1 = bf16[128,4]{1,0} fusion(%x), kind=kCustom, calls=%gather_fusion
  ROOT %t = (s32[]) tuple(%i)
}

%token_cond (p: (s32[], pred[4])) -> pred[] {
  %done = pred[4] get-tuple-element(%p), index=1
  ROOT %all = pred[] reduce(%done, %f), dimensions={0}, to_apply=%and
}

%token_body (p: (s32[], pred[4])) -> (s32[], pred[4]) {
  %while.1 = (s32[]) while(%init), condition=%layer_cond, body=%layer_body
  %all-reduce.1 = f32[16]{0} all-reduce(%y), to_apply=%add
}

%all-reduce-scatter.3 (input: f32[64]) -> f32[16] {
  %all-reduce.2 = f32[64]{0} all-reduce(%input), to_apply=%add
  ROOT %slice = f32[16]{0} dynamic-slice(%all-reduce.2, %o), dynamic_slice_sizes={16}
}

ENTRY %main (a: f32[64]) -> f32[16] {
  %while.3 = (s32[]) while(%init), condition=%layer_cond, body=%layer_body, metadata={op_name="jit(_generate)/Transformer/while"}
  %while.2 = (s32[], pred[4]) while(%s), condition=%token_cond, body=%token_body, metadata={op_name="jit(_generate)/while"}
  ROOT %fusion.2 = f32[16]{0} fusion(%a), kind=kCustom, calls=%all-reduce-scatter.3
}
"""


def test_collectives_are_counted_by_kind():
    counts = preflight.collectives(HLO)
    assert counts == {"all-gather": 1, "reduce-scatter": 1, "all-reduce": 1, "all-to-all": 0,
                      "collective-permute": 0}


def test_a_token_loop_iteration_counts_each_layer_of_its_scan():
    # 3 layers x bf16[128, 4] gathered, one f32[16] all-reduce.
    assert preflight.loop_collective_bytes(HLO) == {"all-gather": 3 * 128 * 4 * 2, "all-reduce": 16 * 4}
    assert preflight.loop_collective_bytes("HloModule m\n\nENTRY %main () -> f32[] {\n}\n") is None


def test_the_preflight_error_names_the_bytes_and_the_knobs():
    cfg = models.get_config("tiny", remat=False)
    mesh = jax.sharding.AbstractMesh((1, 4, 1), ("data", "fsdp", "tensor"))
    reports = {"learn": {"needed_bytes": 20 * 2**30}, "reshard": {"needed_bytes": 2**30},
               "generate": {"needed_bytes": 18 * 2**30, "compiled": None}}  # XLA refused generate
    with pytest.raises(preflight.HBMError) as error:
        preflight.check_fits(reports, 16 * 2**30, cfg, RLConfig(micro_batches=2), mesh)
    message = str(error.value)
    assert "\n" not in message and "16.00 GiB" in message and "reshard" not in message
    assert "per device, learn 20.00 GiB, generate more than 18.00 GiB, but" in message
    for knob in ("mesh.fsdp", "model.overrides.remat=True", "rl.micro_batches (now 2", "param_dtype='bfloat16'",
                 "mesh.tensor"):
        assert knob in message
    preflight.check_fits(reports, 21 * 2**30, cfg, RLConfig(), mesh)  # fits: no error

"""The plan on the CPU side (`--target=cpu-N`, XLA:CPU): exact parameter counts of Llama-3.1-8B + LoRA from
abstract shapes, the compiler's argument bytes against our shard accounting, compiled FLOPs against the
formula, and the CLI. The TPU and GPU compilers' plans are tests/aot (`make aot`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from hinqa_jax import hlo, lora, model, plan, targets
from hinqa_jax.config import default_config

REPO = Path(__file__).resolve().parents[1]
BASE_8B = 8_030_261_248  # Meta-Llama-3.1-8B
LORA_8B_R16 = 41_943_040  # r=16 on q,k,v,o,gate,up,down of 32 layers: 16 * 81920 * 32


def _config(preset="small", mesh=(1, 8, 1), seq=128, batch=8, remat="none", dtype="float32", vocab=4096):
  c = default_config()
  c.model.preset, c.model.vocab_size, c.model.remat = preset, vocab, remat
  c.model.param_dtype = c.model.dtype = dtype
  c.data.seq_len, c.train.batch_size = seq, batch
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  return c


def test_8b_parameter_counts_from_abstract_shapes():
  cfg = model.ModelConfig.preset("llama3_8b")
  base = jax.eval_shape(model.init, cfg, jax.random.key(0))
  adapters = jax.eval_shape(lambda k: lora.init(cfg, lora.LoraConfig(rank=16, alpha=32, targets=lora.ALL_TARGETS), k),
                            jax.random.key(0))
  assert model.count_params(base) == BASE_8B
  assert model.count_params(adapters) == LORA_8B_R16


@pytest.mark.parametrize("mesh", [(1, 8, 1), (8, 1, 1), (2, 2, 2)])
def test_compiler_argument_bytes_are_our_shard_accounting(mesh):
  p = plan.plan(_config(mesh=mesh), "cpu-8", evaluation=False)
  pd = p["per_device"]
  ours = pd["base"] + pd["trainable"] + pd["optimizer"] + pd["batch"] + 4  # + the int32 step counter
  assert abs(pd["arguments"] - ours) <= 1e-3 * ours
  assert p["platform"] == "cpu" and p["fit"]["fits"] is None and p["estimate"] is None
  sharded = mesh[1] * mesh[2]  # fsdp and tensor shard the weights; data replicates them
  # Independent of the plan's accounting: the model's own parameter count from abstract shapes, float32.
  base_bytes = 4 * model.count_params(jax.eval_shape(model.init, model.ModelConfig.preset("small", vocab_size=4096),
                                                     jax.random.key(0)))
  assert p["unique_bytes"]["base"] == base_bytes
  assert pd["base"] == pytest.approx(base_bytes / sharded, rel=0.01)


def test_compiled_flops_equal_analytic_without_remat():
  c = _config(mesh=(2, 4, 1), remat="none")
  c.model.layer_loop = "scan"  # unrolled, XLA:CPU rewrites some small LoRA dots into non-dot ops
  p = plan.plan(c, "cpu-8", evaluation=False)
  f = p["flops"]
  assert f["analytic_recompute"] == 0 and f["kernel_attention_per_device"] == 0  # XLA attention: in the HLO
  assert 8 * f["compiled_matmul_per_device"] == pytest.approx(f["analytic_model"], rel=1e-9)


# The shape of a scan in the TPU compiler's HLO (from a libtpu dump): no known_trip_count on the while, the
# bound is the condition's `counter < constant(N)`, and a dot is a convolution with dim_labels.
TPU_STYLE_HLO = """
%cond.1 (p.1: (s32[], f32[4,8])) -> pred[] {
  %constant.7.clone.3 = s32[]{:T(128)} constant(3), metadata={stack_frame_id=30}
  %p.1 = (s32[]{:T(128)}, f32[4,8]{1,0:T(8,128)}) parameter(0)
  %get-tuple-element.1 = s32[]{:T(128)} get-tuple-element(%p.1), index=0
  ROOT %lt.1 = pred[]{:T(512)} compare(%get-tuple-element.1, %constant.7.clone.3), direction=LT, metadata={op_name="x"}
}
%body.1 (p.2: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %p.2 = (s32[]{:T(128)}, f32[4,8]{1,0:T(8,128)}) parameter(0)
  %w.1 = f32[8,16]{1,0:T(8,128)} constant({...})
  %x.1 = f32[4,8]{1,0:T(8,128)} get-tuple-element(%p.2), index=1
  %convolution.1 = f32[4,16]{1,0:T(8,128)} convolution(%x.1, %w.1), dim_labels=bf_io->bf, metadata={op_name="dot_general"}
  ROOT %t.1 = (s32[]{:T(128)}, f32[4,8]{1,0:T(8,128)}) tuple(%get-tuple-element.1, %x.1)
}
ENTRY %main.1 (a.1: f32[4,8]) -> f32[4,8] {
  %a.1 = f32[4,8]{1,0:T(8,128)} parameter(0)
  %while.1 = (s32[]{:T(128)}, f32[4,8]{1,0:T(8,128)}) while(%init.1), condition=%cond.1, body=%body.1, metadata={op_name="w"}
  ROOT %r.1 = f32[4,8]{1,0:T(8,128)} get-tuple-element(%while.1), index=1
}
"""


def test_hlo_flops_follow_while_loops_with_or_without_a_trip_count():
  """XLA:CPU annotates a scan's loop with its trip count; the TPU compiler leaves only the condition."""
  text = jax.jit(lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=3)[0]).lower(
      jax.ShapeDtypeStruct((4, 8), "float32"), jax.ShapeDtypeStruct((8, 8), "float32")).compile().as_text()
  assert '"known_trip_count":{"n":"3"}' in text
  assert hlo.hlo_matmul_flops(text) == 3 * 2 * 4 * 8 * 8
  assert hlo.hlo_matmul_flops(TPU_STYLE_HLO) == 3 * 2 * 4 * 16 * 8
  assert hlo.hlo_matmul_flops(TPU_STYLE_HLO.replace("constant(3)", "constant(5)")) == 5 * 2 * 4 * 16 * 8


def test_hlo_flops_count_only_the_window_taps_that_read_the_input():
  """libtpu writes some batched dots as a convolution with a window of 2 over a padded spatial dimension
  (the shape of a line from its 8B dump): one of the two taps reads padding, so it is one product per output."""
  line = ("  %conv.1 = bf16[2,4,2,3]{3,1,0,2} convolution(%x.1, %w.1), window={size=2x1 pad=1_1x0_0 "
          "rhs_reversal=1x0}, dim_labels=1bf0_i0o1->1b0f, metadata={op_name=\"dot_general\"}")
  text = ("ENTRY %main.1 (x.1: bf16[2,4,8,1], w.1: bf16[2,3,8,1]) -> bf16[2,4,2,3] {\n"
          "  %x.1 = bf16[2,4,8,1]{3,2,1,0} parameter(0)\n  %w.1 = bf16[2,3,8,1]{3,2,1,0} parameter(1)\n"
          + line + "\n}\n")
  assert hlo.hlo_matmul_flops(text) == 2 * (2 * 4 * 2 * 3) * 8  # output size x contracted f, no window factor
  # A real window: spatial input 2, window 2, no padding: one output position, both taps read input.
  unpadded = (text.replace("pad=1_1x0_0 ", "").replace("bf16[2,4,2,3]{3,1,0,2} conv", "bf16[2,4,1,3]{3,1,0,2} conv")
              .replace("bf16[2,4,8,1]{3,2,1,0} parameter", "bf16[2,4,8,2]{3,2,1,0} parameter"))
  assert hlo.hlo_matmul_flops(unpadded) == 2 * (2 * 4 * 1 * 3) * 8 * 2


def test_unknown_target_and_missing_compiler_are_clear_errors():
  with pytest.raises(ValueError, match="known: v5e-1"):
    targets.get("v7x-8")
  if not targets.compiler_installed("tpu"):  # the CPU venv of `make test`
    with pytest.raises(RuntimeError, match="make aot"):
      targets.devices("v5e-8")


def test_more_devices_than_this_process_has_is_a_clear_error():
  have = len(jax.devices())  # JAX has started in this process: it cannot make more devices now
  with pytest.raises(ValueError, match="fresh process"):
    targets.cpu_devices(have * 2)


def test_cli_plans_for_more_cpu_devices_than_the_machine_has(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # conftest's 8 fake devices are inherited: the plan asks for 16
  out = subprocess.run([sys.executable, "-m", "hinqa_jax", "plan", "--config=configs/tiny.py", "--target=cpu-16",
                        f"--json={tmp_path / 'plan.json'}", "--config.mesh.data=8", "--config.mesh.fsdp=2",
                        "--config.train.batch_size=16", "--config.model.vocab_size=512"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "mesh: data=8 fsdp=2 tensor=1" in out.stdout and "16 x cpu" in out.stdout
  saved = json.loads((tmp_path / "plan.json").read_text())
  assert saved["devices"] == 16 and saved["fit"]["fits"] is None
  total = next(line for line in out.stdout.splitlines() if line.startswith("compiled total"))
  assert total.split()[2:4] == [f"{saved['per_device']['total'] / 1e6:.2f}", "MB"]


def test_plan_needs_no_weights_on_this_machine(tmp_path):
  c = _config(mesh=(1, 1, 1), seq=64, batch=2, vocab=512)
  c.model.hf_path = str(tmp_path / "Llama-3.1-8B")  # the weights live on the cluster, not here
  p = plan.plan(c, "cpu-1")
  assert p["model"]["preset"] == "small" and "has no config.json" in p["model"]["note"]
  assert "planned with the shapes of preset small" in plan.report(p)
  assert c.model.hf_path == str(tmp_path / "Llama-3.1-8B")  # the caller's config is left alone
  c.model.preset = "tiny"  # the default: nothing names the shapes
  with pytest.raises(ValueError, match="--config.model.preset=llama3_8b"):
    plan.plan(c, "cpu-1")


def test_plan_without_a_target_names_the_targets():
  out = subprocess.run([sys.executable, "-m", "hinqa_jax", "plan", "--config=configs/tiny.py"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "plan needs --target=NAME: v5e-1" in out.stderr and "cpu-N" in out.stderr

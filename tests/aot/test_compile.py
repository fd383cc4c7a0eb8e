"""The real TPU and GPU compilers on this CPU machine (`make aot`): Llama-3.1-8B's layer shapes (2 layers,
the real 128,256 vocabulary) compiled by libtpu for a TPU v5e 2x2 slice and by XLA:GPU for 4 H100s, on
every mesh shape, LoRA and full; the compiled HLO names the kernel and its buffers are checked against
our own shard accounting and the analytic FLOPs."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from hinqa_jax import plan, sharding, targets, train
from hinqa_jax.config import default_config, load

REPO = Path(__file__).resolve().parents[2]
SEQ = 640  # 5 x 128: a length no weight dimension has, so a [.., 640, 640] buffer can only be scores
TARGETS = ("v5e-4", "h100x4")
MESHES = {"data": (4, 1, 1), "fsdp": (1, 4, 1), "tensor": (1, 1, 4), "mixed": (2, 1, 2)}
KERNELS = {"tpu": {"splash_mha_fwd_segmented_residuals", "splash_mha_dq_segmented_no_residuals",
                   "splash_mha_dkv_segmented_no_residuals"},
           "gpu": {"mha_forward", "mha_backward"}}


def _config(mesh=(1, 4, 1), mode="lora", remat="full", batch=8, seq=SEQ):
  c = default_config()
  c.model.preset, c.model.n_layers, c.model.vocab_size = "llama3_8b", 2, 128256
  c.model.dtype = c.model.param_dtype = "bfloat16"
  c.model.remat = remat
  c.train.mode, c.train.batch_size = mode, batch
  c.data.seq_len = seq
  c.lora.rank, c.lora.alpha = 16, 32.0
  # LoRA dropout on: its threefry bits add ~1 min of TPU compile per step at these shapes; off here to keep
  # the suite short (the vatika configs' dropout=0.05 step is what bench/plan_table.py compiles).
  c.lora.dropout = 0.0
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  return c


def _dense_scores(text: str, t: int) -> list[str]:
  """Buffers of the HLO with two trailing-or-not dimensions equal to T: a materialised T x T score or mask."""
  return sorted({m for m in re.findall(r"\b(?:f32|bf16|pred|s32)\[[0-9,]*\]", text)
                 if m.count(f"{t}") >= 2 and f"{t},{t}" in m})


@pytest.mark.parametrize("mode", ["lora", "full"])
@pytest.mark.parametrize("mesh", list(MESHES))
@pytest.mark.parametrize("target", TARGETS)
def test_train_step_compiles_with_the_target_kernel(target, mesh, mode):
  p = plan.plan(_config(MESHES[mesh], mode), target, evaluation=False, hlo_text=True)
  platform = p["platform"]
  assert platform == targets.get(target).platform and p["devices"] == 4
  names = set().union(*(p["kernels"].get(k, []) for k in ("tpu_custom_call", "__gpu$xla.gpu.triton")))
  assert KERNELS[platform] <= names, p["kernels"]
  assert not any(k.startswith("__cudnn$fmha") for k in p["kernels"])
  assert _dense_scores(p["hlo"], SEQ) == []
  pd = p["per_device"]
  # The compiler's argument bytes are our per-leaf shard accounting (+ the int32 step counter).
  ours = pd["base"] + pd["trainable"] + pd["optimizer"] + pd["batch"] + 4
  assert abs(pd["arguments"] - ours) <= 1e-3 * ours
  assert p["fit"]["fits"] and pd["total"] < targets.get(target).memory
  f = p["flops"]
  total = 4 * f["per_device"]
  assert f["analytic_model"] < total <= f["analytic_model"] + f["analytic_recompute"]


@pytest.mark.parametrize("mesh", ["data", "fsdp"])
@pytest.mark.parametrize("target", TARGETS)
def test_compiled_matmul_flops_equal_the_formula_without_remat(target, mesh):
  """Without remat, the compiled HLO's matmuls (loop trip counts applied: the TPU compiler writes none, they
  are read off the loop condition; its windowed convolutions count only the taps that read input) are exactly
  the analytic count less the attention inside the kernel, on the data and the fsdp mesh."""
  p = plan.plan(_config(MESHES[mesh], remat="none"), target, evaluation=False)
  f = p["flops"]
  assert 4 * f["compiled_matmul_per_device"] == pytest.approx(f["analytic_model"] - 4 * f["kernel_attention_per_device"],
                                                               rel=1e-9)


@pytest.mark.parametrize("target", TARGETS)
def test_loss_only_head_never_forms_full_logits(target):
  """With the data's loss_cap the head runs on [B, cap, V] only; without it, on [B, chunk, V] chunks of all T.
  (Its memory is not always lower: on TPU at these shapes the capped step's temporaries are 0.8 GB above the
  chunked one's, see the README; its FLOPs are.)"""
  def widest_logits(p):
    sizes = [math.prod(int(x) for x in m.split(",")) for m in re.findall(r"f32\[([0-9,]*128256[0-9,]*)\]", p["hlo"])]
    return max(sizes) // 128256

  capped = plan.plan(_config(), target, evaluation=False, loss_cap=64, hlo_text=True)
  full = plan.plan(_config(), target, evaluation=False, hlo_text=True)
  rows = 8 // 4  # rows per device (fsdp 4)
  assert widest_logits(capped) <= rows * 64 < widest_logits(full) <= rows * SEQ
  assert capped["flops"]["compiled_matmul_per_device"] < full["flops"]["compiled_matmul_per_device"]


@pytest.mark.parametrize("target", TARGETS)
def test_generate_compiles_with_the_kernel_in_the_prefill(target):
  c = _config()
  c.eval.batch_size, c.eval.max_new_tokens = 8, 128
  e = plan.plan_eval(c, target, hlo_text=True)
  platform = targets.get(target).platform
  names = set().union(*e["kernels"].values())
  assert {"tpu": "splash_mha_fwd_segmented_no_residuals", "gpu": "mha_forward"}[platform] in names, e["kernels"]
  assert _dense_scores(e["hlo"], e["prompt_len"]) == []
  assert e["fit"]["fits"] and e["per_device"]["weights"] < 1.01 * 2 * 1_486_901_248 / 4


def test_json_equals_memory_analysis_of_the_same_compile(tmp_path):
  out = tmp_path / "plan.json"
  flags = ["--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.train.batch_size=8", "--config.data.seq_len=256",
           "--config.model.vocab_size=512"]
  run = subprocess.run([sys.executable, "-m", "hinqa_jax", "plan", "--config=configs/tiny.py", "--target=v5e-4",
                        f"--json={out}", *flags], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "splash_mha_fwd_segmented_residuals" in run.stdout
  got = json.loads(out.read_text())
  # The same step compiled here by hand, from the config file and the same overrides.
  c = load(REPO / "configs" / "tiny.py", **{"mesh.data": 1, "mesh.fsdp": 4, "train.batch_size": 8,
                                             "data.seq_len": 256, "model.vocab_size": 512})
  mesh = sharding.make_mesh(dict(c.mesh), devices=targets.devices("v5e-4"))
  cfg, lcfg = train.model_config(c), train.lora_config(c)
  optimizer, schedule = train.make_optimizer(c.train)
  from hinqa_jax import model
  base = jax.eval_shape(model.init, cfg, jax.random.key(0))
  state = jax.eval_shape(train.fresh_state_fn(cfg, lcfg, "lora", optimizer), jax.random.key(0), base)
  state_sh, base_sh = train.state_shardings(state, mesh), sharding.tree_shardings(base, mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh))
           for k, v in train.batch_spec(c, 256).items()}
  mem = train.jit_step(c, cfg, lcfg, "lora", mesh, state_sh, base_sh, optimizer, schedule).lower(
      sharding.like_tree(state, state_sh), sharding.like_tree(base, base_sh), batch).compile().memory_analysis()
  pd = got["per_device"]
  assert (pd["arguments"], pd["outputs"], pd["aliased"], pd["temp"]) == (
      mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes, mem.temp_size_in_bytes)
  assert got["target"]["name"] == "v5e-4" and got["target"]["device_kind"] == "TPU v5 lite"


def test_a_multi_host_slice_compiles_from_one_process():
  """v5e-256: 64 hosts of 4 chips; every device's program compiled here, in one process."""
  devs = targets.devices("v5e-256")
  assert len(devs) == 256 and len({d.process_index for d in devs}) == 64 == targets.get("v5e-256").hosts
  c = load(REPO / "configs" / "tiny.py", **{"mesh.data": 16, "mesh.fsdp": 16, "train.batch_size": 256,
                                             "data.seq_len": 128, "model.vocab_size": 512})
  p = plan.plan(c, "v5e-256", evaluation=False)
  assert p["devices"] == 256 and p["mesh"] == {"data": 16, "fsdp": 16, "tensor": 1}
  assert "splash_mha_fwd_segmented_residuals" in p["attention_kernel"]


@pytest.mark.parametrize("name", [n for n, t in targets.TARGETS.items() if t.platform == "gpu"])
def test_gpu_target_texts_agree_with_the_target_table(name):
  """Two sources written apart: the GpuTargetConfigProto text (what the compiler sees) and the table's memory."""
  t = targets.get(name)
  text = (targets.GPU_TARGET_DIR / t.gpu_config).read_text()
  devs = targets.devices(t)
  assert len(devs) == t.devices
  assert devs[0].device_kind == re.search(r'device_description_str: "([^"]+)"', text).group(1)
  assert int(re.search(r"device_memory_size: (\d+)", text).group(1)) == t.memory
  bandwidth = int(re.search(r"memory_bandwidth: (\d+)", text).group(1))
  assert abs(bandwidth - t.hbm_bandwidth) <= 0.01 * t.hbm_bandwidth


def test_a_step_too_big_for_the_device_is_a_does_not_fit_not_a_crash():
  """libtpu refuses to compile a program whose buffers exceed HBM: the plan says so, with the compiler's words.
  Full fine-tuning of a 4-layer slice: its bf16 weights, gradients and AdamW moments are 15.4 GB, HBM 16 GiB."""
  c = _config((1, 1, 1), mode="full", batch=4)
  c.model.n_layers = 4
  p = plan.plan(c, "v5e-1", evaluation=False)
  assert p["fit"]["fits"] is False and "RESOURCE_EXHAUSTED" in p["fit"]["compiler"]
  assert p["per_device"]["total"] is None and p["attention_kernel"].startswith("not compiled")
  assert "does NOT fit one TPU v5 lite" in plan.report(p)

"""The plan: exact parameter counts of Llama-3.1-8B + LoRA, bytes per device per mesh, compiled FLOPs, fits."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from hinqa_jax import plan
from hinqa_jax.config import default_config

REPO = Path(__file__).resolve().parents[1]
BASE_8B = 8_030_261_248  # Meta-Llama-3.1-8B
LORA_8B_R16 = 41_943_040  # r=16 on q,k,v,o,gate,up,down of 32 layers: 16 * 81920 * 32


def _config(preset="llama3_8b", mesh=(1, 8, 1), seq=2048, batch=8, remat="full", dtype="bfloat16", vocab=128256):
  c = default_config()
  c.model.preset, c.model.vocab_size, c.model.remat = preset, vocab, remat
  c.model.param_dtype = c.model.dtype = dtype
  c.data.seq_len, c.train.batch_size = seq, batch
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  return c


@pytest.fixture(scope="module")
def plans_8b():
  return {mesh: plan.plan(_config(mesh=mesh), devices=8, evaluation=False) for mesh in [(1, 8, 1), (8, 1, 1)]}


def test_8b_parameter_counts_and_bytes(plans_8b):
  fsdp, data = plans_8b[(1, 8, 1)], plans_8b[(8, 1, 1)]
  for p in (fsdp, data):
    assert p["base_params"] == BASE_8B
    assert p["trainable_params"] == LORA_8B_R16
    assert p["unique_bytes"]["base"] == 2 * BASE_8B  # bf16
    assert abs(p["unique_bytes"]["base"] / 16.06e9 - 1) < 0.05
    assert p["unique_bytes"]["trainable"] == 4 * LORA_8B_R16  # float32 adapters
    pd = p["per_device"]
    # The compiler's own argument bytes are our per-leaf shard accounting (+ the int32 step counter).
    ours = pd["base"] + pd["trainable"] + pd["optimizer"] + pd["batch"] + 4
    assert abs(pd["arguments"] - ours) <= 1e-3 * ours
  # fsdp=8 shards every large weight 8 ways (only the 65 norm vectors stay whole); data=8 replicates.
  assert abs(fsdp["per_device"]["base"] - 2 * BASE_8B / 8) < 0.001 * 2 * BASE_8B / 8
  assert data["per_device"]["base"] == 2 * BASE_8B
  assert fsdp["all_devices"]["base"] < 1.01 * 2 * BASE_8B
  assert data["all_devices"]["base"] == 8 * 2 * BASE_8B


def test_8b_fits_by_its_own_numbers(plans_8b):
  for mesh, p in plans_8b.items():
    total = p["per_device"]["total"]
    assert total >= p["per_device"]["arguments"] + p["per_device"]["temp"] - p["per_device"]["aliased"]
    for name, cap in plan.DEVICE_MEMORY.items():
      assert p["fits"][name] == (total <= cap)
    text = plan.report(p, "h100")
    assert ("h100" in text) and (("does NOT fit" in text) != p["fits"]["h100"])
  # A 16 GiB v5e holds the fsdp=8 shard (about 2 GB of weights) but not a full 16 GB copy per device.
  assert plans_8b[(1, 8, 1)]["fits"]["v5e"] and not plans_8b[(8, 1, 1)]["fits"]["v5e"]
  assert plans_8b[(1, 8, 1)]["fits"]["h100"] and plans_8b[(8, 1, 1)]["fits"]["h100"]


def test_8b_flops_between_model_and_model_plus_recompute(plans_8b):
  f = plans_8b[(1, 8, 1)]["flops"]
  assert f["tokens"] == 8 * 2048
  compiled = 8 * f["compiled_per_device"]
  # remat "full" recomputes the layers' forward, except what the backward never reads (XLA drops it).
  assert f["analytic_model"] < compiled <= f["analytic_model"] + f["analytic_recompute"]
  assert f["xla_cost_analysis_per_device"] < f["compiled_per_device"] / 5  # cost_analysis counts the scan once


def test_compiled_flops_equal_analytic_without_remat():
  p = plan.plan(_config("small", mesh=(2, 4, 1), seq=128, batch=8, remat="none", dtype="float32", vocab=4096), devices=8)
  f = p["flops"]
  assert f["analytic_recompute"] == 0
  assert 8 * f["compiled_per_device"] == pytest.approx(f["analytic_model"], rel=1e-9)


def test_more_devices_than_this_process_has_is_a_clear_error():
  have = len(jax.devices())  # JAX has started in this process: it cannot make more devices now
  with pytest.raises(ValueError, match="fresh process"):
    plan.plan_devices(have * 2)


def test_cli_plans_for_more_devices_than_the_machine_has():
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # conftest's 8 fake devices are inherited: the plan asks for 16
  out = subprocess.run([sys.executable, "-m", "hinqa_jax", "plan", "--config=configs/tiny.py", "--devices=16",
                        "--device_memory=v5e", "--config.mesh.data=8", "--config.mesh.fsdp=2",
                        "--config.train.batch_size=16", "--config.model.vocab_size=512"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "mesh: data=8 fsdp=2 tensor=1 on 16 cpu devices" in out.stdout
  assert "v5e" in out.stdout and "fits" in out.stdout


def test_plan_needs_no_weights_on_this_machine(tmp_path):
  c = _config("small", mesh=(1, 1, 1), seq=64, batch=2, remat="none", dtype="float32", vocab=512)
  c.model.hf_path = str(tmp_path / "Llama-3.1-8B")  # the weights live on the cluster, not here
  p = plan.plan(c, devices=1)
  assert p["model"]["preset"] == "small" and "has no config.json" in p["model"]["note"]
  assert "planned with the shapes of preset small" in plan.report(p)
  assert c.model.hf_path == str(tmp_path / "Llama-3.1-8B")  # the caller's config is left alone
  c.model.preset = "tiny"  # the default: nothing names the shapes
  with pytest.raises(ValueError, match="--config.model.preset=llama3_8b"):
    plan.plan(c, devices=1)

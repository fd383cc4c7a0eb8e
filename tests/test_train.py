"""Training on meshes: sharded equals single-device, exact resume, only adapters change, clear errors."""
import json
import os
import signal

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from hinqa_jax import checkpoint, sharding, train
from hinqa_jax.tracking import read_metrics
from train_utils import ToyPacked, toy_config


def _losses(workdir, stage="s"):
  return [m["loss"] for m in read_metrics(os.path.join(workdir, stage))]


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  d = tmp_path_factory.mktemp("single")
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  out = train.run_stage(toy_config(), d, "s", ToyPacked(), mesh=mesh, progress=False)
  return _losses(d), out


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_loss_equals_single_device(tmp_path, single_device_run, mesh):
  ref, _ = single_device_run
  out = train.run_stage(toy_config(mesh=mesh), tmp_path, "s", ToyPacked(), progress=False)
  got = _losses(tmp_path)
  assert len(got) == len(ref) == 5
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
  assert ref[-1] < ref[0]  # it learns
  # The specs the rule promises, on the real arrays.
  data, fsdp, tensor = mesh
  q = out["frozen"]["layers"]["self_attn"]["q_proj"]["kernel"]
  down = out["frozen"]["layers"]["mlp"]["down_proj"]["kernel"]
  ad_q = out["state"]["trainable"]["layers"]["self_attn"]["q_proj"]
  want_in = "fsdp" if fsdp > 1 else None
  want_out = "tensor" if tensor > 1 else None
  assert q.sharding.spec == P(None, want_in, want_out)
  assert down.sharding.spec == P(None, want_out, want_in)
  assert ad_q["a"].sharding.spec == P(None, want_in, None)
  assert ad_q["b"].sharding.spec == P(None, None, want_out)
  mu = out["state"]["opt_state"][1][0].mu["layers"]["self_attn"]["q_proj"]["a"]
  assert mu.sharding.spec == ad_q["a"].sharding.spec  # optimizer moments sharded like their parameters


def test_only_adapters_change(single_device_run):
  _, out = single_device_run
  import jax.numpy as jnp
  fresh = train.load_base(toy_config(), out["cfg"], sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1},
                                                                       devices=jax.devices()[:1]))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(out["frozen"]), jax.device_get(fresh))
  b = out["state"]["trainable"]["layers"]["mlp"]["up_proj"]["b"]
  assert float(jnp.abs(b).max()) > 0  # the adapters did move


def test_grad_accumulation_equals_one_big_batch(tmp_path, single_device_run):
  ref, _ = single_device_run
  c = toy_config(mesh=(2, 1, 1))
  c.train.grad_accum = 2
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
  train.run_stage(c, tmp_path, "s", ToyPacked(), mesh=mesh, progress=False)
  np.testing.assert_allclose(_losses(tmp_path), ref, atol=1e-5, rtol=0)


class _KillAt(ToyPacked):
  """Sends this process SIGTERM while step `at` is being fetched (as a preemption would)."""

  def __init__(self, at):
    super().__init__()
    self.at = at

  def get_batch(self, step, *a, **k):
    if step == self.at:
      os.kill(os.getpid(), signal.SIGTERM)
    return super().get_batch(step, *a, **k)


def test_sigterm_then_resume_is_bit_identical(tmp_path):
  straight = train.run_stage(toy_config(steps=10, every=3), tmp_path / "a", "s", ToyPacked(), progress=False)
  with pytest.raises(SystemExit) as e:
    train.run_stage(toy_config(steps=10, every=3), tmp_path / "b", "s", _KillAt(4), progress=False)
  assert e.value.code == 143
  mngr = checkpoint.manager(tmp_path / "b" / "s" / "checkpoints")
  assert mngr.latest_step() == 5  # the interrupted step finished and was saved
  resumed = train.run_stage(toy_config(steps=10, every=3), tmp_path / "b", "s", ToyPacked(), progress=False)
  assert _losses(tmp_path / "b") == _losses(tmp_path / "a")  # bit-identical, and no duplicated lines
  assert [m["step"] for m in read_metrics(tmp_path / "b" / "s")] == list(range(1, 11))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed["state"]["trainable"]),
               jax.device_get(straight["state"]["trainable"]))


def test_stage_two_starts_from_stage_one_adapters(tmp_path):
  one = train.run_stage(toy_config(steps=3), tmp_path, "m1", ToyPacked(), progress=False)
  c = toy_config(steps=1)
  c.train.learning_rate = 0.0  # no update: the adapters after the step are the ones it started from
  c.train.warmup_steps = 0
  two = train.run_stage(c, tmp_path, "m2", ToyPacked(), init_from=str(tmp_path / "m1" / "checkpoints"),
                        progress=False)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(two["state"]["trainable"]),
               jax.device_get(one["state"]["trainable"]))


def test_bad_meshes_batches_and_checkpoints(tmp_path):
  with pytest.raises(ValueError, match=r"needs 12 devices, but there are 8"):
    sharding.make_mesh({"data": 3, "fsdp": 2, "tensor": 2})
  with pytest.raises(ValueError, match=r"3 does not divide the 8 devices"):
    sharding.make_mesh({"data": -1, "fsdp": 3, "tensor": 1})
  with pytest.raises(ValueError, match=r"micro-batch of 6 rows .* does not divide over the 8 devices"):
    train.run_stage(toy_config(batch=6, mesh=(8, 1, 1)), tmp_path, "s", ToyPacked(), progress=False)
  c = toy_config(batch=8)
  c.train.grad_accum = 3
  with pytest.raises(ValueError, match="not divisible by train.grad_accum=3"):
    train.run_stage(c, tmp_path, "s", ToyPacked(), progress=False)
  c = toy_config()
  c.lora.targets = ("q_proj", "qkv_proj")
  with pytest.raises(ValueError, match=r"unknown LoRA targets \['qkv_proj'\]"):
    train.run_stage(c, tmp_path, "s", ToyPacked(), progress=False)
  train.run_stage(toy_config(steps=2), tmp_path, "r", ToyPacked(), progress=False)
  with pytest.raises(ValueError, match=r"r: the checkpoint in .* is at step 2, past train.num_steps=1"):
    train.run_stage(toy_config(steps=1), tmp_path, "r", ToyPacked(), progress=False)
  c = toy_config(steps=4)
  c.lora.rank = 8
  with pytest.raises(ValueError, match=r"checkpoint .*: lora .*'rank': 4.* does not match this run's .*'rank': 8"):
    train.run_stage(c, tmp_path, "r", ToyPacked(), progress=False)


def test_nan_loss_fails_fast(tmp_path):
  c = toy_config(steps=3)
  c.train.learning_rate = 1e30
  c.train.warmup_steps = 0
  c.train.clip_norm = 1e30
  with pytest.raises(FloatingPointError, match=r"s: loss is (nan|inf) at step \d"):
    train.run_stage(c, tmp_path, "s", ToyPacked(), progress=False)


def test_restore_onto_a_different_mesh(tmp_path):
  straight = train.run_stage(toy_config(steps=4, mesh=(8, 1, 1)), tmp_path / "a", "s", ToyPacked(), progress=False)
  with pytest.raises(SystemExit):
    train.run_stage(toy_config(steps=4, mesh=(8, 1, 1), every=2), tmp_path / "b", "s", _KillAt(1), progress=False)
  resumed = train.run_stage(toy_config(steps=4, mesh=(1, 2, 4)), tmp_path / "b", "s", ToyPacked(), progress=False)
  ad = resumed["state"]["trainable"]["layers"]["self_attn"]["q_proj"]
  assert ad["a"].sharding.spec == P(None, "fsdp", None)  # restored straight into the new mesh's layout
  np.testing.assert_allclose(_losses(tmp_path / "b"), _losses(tmp_path / "a"), atol=1e-5, rtol=0)
  # Another mesh sums in another order; Adam divides by sqrt(v), so an ulp-level gradient difference in a
  # near-zero coordinate moves that weight by up to ~lr * 1e-3 (1e-5 here) after a few steps.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=5e-5, rtol=0),
               jax.device_get(resumed["state"]["trainable"]), jax.device_get(straight["state"]["trainable"]))


@pytest.mark.parametrize("remat", ["full", "dots"])
def test_remat_policies_give_the_same_gradients(remat):
  import jax.numpy as jnp

  from hinqa_jax import lora, model
  c = toy_config()
  cfg = train.model_config(c, 256)
  lcfg = train.lora_config(c)
  params = model.init(cfg, jax.random.key(0))
  ad = jax.tree.map(lambda x: x + 0.01, lora.init(cfg, lcfg, jax.random.key(1)))
  batch = {k: jnp.asarray(v) for k, v in ToyPacked().get_batch(0, 4, 0).items()}
  grad = lambda cfg_: jax.grad(lambda a: train.loss_sums(a, params, batch, None, cfg=cfg_, lcfg=lcfg,  # noqa: E731
                                                          mode="lora")[0])(ad)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-6), grad(cfg.replace(remat=remat)),
               grad(cfg))


@pytest.mark.parametrize("remat", ["none", "full"])
def test_unrolled_layers_give_the_same_loss_and_gradients_as_the_scan(remat):
  import jax.numpy as jnp

  from hinqa_jax import lora, model
  c = toy_config()
  cfg = train.model_config(c, 256).replace(remat=remat)
  lcfg = train.lora_config(c)
  params = model.init(cfg, jax.random.key(0))
  ad = jax.tree.map(lambda x: x + 0.01, lora.init(cfg, lcfg, jax.random.key(1)))
  batch = {k: jnp.asarray(v) for k, v in ToyPacked().get_batch(0, 4, 0).items()}
  grad = lambda loop: jax.value_and_grad(lambda a: train.loss_sums(  # noqa: E731
      a, params, batch, None, cfg=cfg.replace(layer_loop=loop), lcfg=lcfg, mode="lora")[0])(ad)
  (l_scan, g_scan), (l_unrolled, g_unrolled) = grad("scan"), grad("unroll")
  np.testing.assert_allclose(l_unrolled, l_scan, rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-6), g_unrolled, g_scan)
  loops = {loop: jax.jit(lambda p, t, loop=loop: model.forward_hidden(cfg.replace(layer_loop=loop), p, t))
           .lower(params, batch["tokens"]).as_text().count("stablehlo.while") for loop in ("scan", "unroll")}
  assert loops == {"scan": 1, "unroll": 0}  # one loop over the layers, or none
  with pytest.raises(ValueError, match="layer_loop"):
    cfg.replace(layer_loop="python")


def test_stage_two_schedule_starts_fresh_with_the_carried_optimizer(tmp_path):
  """reset_optimizer=False carries M1's Adam state (and optax's update count), but not its schedule position."""
  train.run_stage(toy_config(steps=3), tmp_path, "m1", ToyPacked(), progress=False)
  m1 = checkpoint.restore(checkpoint.manager(tmp_path / "m1" / "checkpoints"), None)[0]
  c = toy_config(steps=3, every=1)
  c.train.reset_optimizer = False
  c.checkpoint.keep = 3
  two = train.run_stage(c, tmp_path, "m2", ToyPacked(), init_from=str(tmp_path / "m1" / "checkpoints"),
                        progress=False)
  # Warm-up from 0 to 1e-2 over 2 steps, then the cosine (3 steps in all) starts at its peak: 0, 5e-3, 1e-2.
  rates = [m["learning_rate"] for m in read_metrics(tmp_path / "m2")]
  assert rates == [0.0, float(np.float32(5e-3)), float(np.float32(1e-2))]  # logged as float32
  assert int(two["state"]["opt_state"][1][0].count) == 6  # Adam really continued from M1's 3 updates
  # The logged rate is the applied one: step 1 applies 0, so M2's adapters after it are M1's exactly ...
  step1 = checkpoint.restore(checkpoint.manager(tmp_path / "m2" / "checkpoints"), None, step=1)[0]
  jax.tree.map(np.testing.assert_array_equal, step1["trainable"], m1["trainable"])
  # ... and the next steps move them.
  assert not np.array_equal(two["state"]["trainable"]["layers"]["mlp"]["up_proj"]["b"],
                            m1["trainable"]["layers"]["mlp"]["up_proj"]["b"])

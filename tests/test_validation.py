"""Validation loss during training, the best checkpoint by it, and training length in epochs."""
import json
import logging

import jax
import numpy as np
import pytest

from hinqa_jax import checkpoint, evaluate, experiments, model, sharding, train, validation
from hinqa_jax.tracking import read_metrics
from train_utils import ToyPacked, toy_config


class ToyVal(ToyPacked):
  """ToyPacked rows read in order, as packing.PackedDataset.read_rows gives them."""

  def __init__(self, rows):
    super().__init__(rows)
    self.num_rows = rows

  def read_rows(self, rows):
    return {k: getattr(self, k)[rows] for k in ("tokens", "segment_ids", "positions", "loss_mask")}


def _reference_val_loss(cfg, params, adapters, lcfg, rows):
  """Token-weighted next-token NLL of answer tokens, from full logits and a numpy log-softmax."""
  logits = np.asarray(model.forward(cfg, params, rows["tokens"], segment_ids=rows["segment_ids"],
                                    positions=rows["positions"], adapters=adapters, lora_cfg=lcfg), np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  seg, tok = rows["segment_ids"], rows["tokens"]
  w = (rows["loss_mask"][:, 1:] > 0) & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
  nll = -np.take_along_axis(logp[:, :-1], tok[:, 1:, None], -1)[..., 0]
  return float((nll * w).sum() / w.sum())


def test_val_loss_logged_and_best_checkpoint_kept(tmp_path):
  c = toy_config(steps=4)
  c.train.eval_every_steps = 3  # at step 3 and at the last step
  c.train.keep_best = True
  val = ToyVal(12)  # 12 rows over micro-batches of 8: the last batch is padded with rows that weigh nothing
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:2])
  out = train.run_stage(c, tmp_path, "s", ToyPacked(), mesh=mesh, progress=False, val_dataset=val)
  logged = {r["step"]: r["val_loss"] for r in read_metrics(tmp_path / "s") if "val_loss" in r}
  assert sorted(logged) == [3, 4]
  want = _reference_val_loss(out["cfg"], jax.device_get(out["frozen"]), jax.device_get(out["state"]["trainable"]),
                             out["lcfg"], val.read_rows(np.arange(12)))
  assert logged[4] == pytest.approx(want, rel=1e-5)
  # best/ holds the lower of the two, and evaluation/export/M2 read it.
  best_step = min(logged, key=logged.get)
  mngr = checkpoint.manager(tmp_path / "s" / "best")
  assert mngr.latest_step() == best_step
  assert checkpoint.read_meta(mngr)["val_loss"] == pytest.approx(logged[best_step])
  assert validation.selected_checkpoints(tmp_path / "s") == tmp_path / "s" / "best"
  adapters, _ = evaluate.load_adapters(tmp_path / "s", out["cfg"])
  saved = checkpoint.restore_subtree(tmp_path / "s" / "best", "trainable", adapters)[0]
  jax.tree.map(np.testing.assert_array_equal, adapters, saved)


def test_without_keep_best_the_final_checkpoint_is_used(tmp_path):
  (tmp_path / "s" / "checkpoints").mkdir(parents=True)
  assert validation.selected_checkpoints(tmp_path / "s") == tmp_path / "s" / "checkpoints"
  (tmp_path / "s" / "best").mkdir()  # empty: no checkpoint was kept
  assert validation.selected_checkpoints(tmp_path / "s") == tmp_path / "s" / "checkpoints"


def test_epochs_become_steps_from_packed_rows(caplog):
  c = toy_config(steps=999, batch=8)
  assert validation.with_epochs(c, 100, "m1") is c  # num_epochs = 0: num_steps stands
  c.train.num_epochs = 2.5
  with caplog.at_level(logging.INFO, logger="hinqa_jax.validation"):
    got = validation.with_epochs(c, 100, "m1")
  assert got.train.num_steps == 32 and c.train.num_steps == 999  # ceil(2.5 * 100 / 8); the input untouched
  assert "m1: 2.5 epoch(s) of 100 packed rows at batch 8 = 32 steps" in caplog.text
  c.train.num_epochs = 0.01
  assert validation.with_epochs(c, 100, "m1").train.num_steps == 1


def test_m2_stage2_steps_override_epochs():
  c = toy_config()
  c.train.num_epochs = 3.0
  c.run.stage2_steps = 7
  plan = experiments.experiment_stages(c, {"all": ["syn.jsonl"]})
  assert [(s["name"], s["epochs"]) for s in plan["m2"]] == [("m1", 3.0), ("m2", 0.0)]
  assert plan["m2"][1]["steps"] == 7 and plan["m3"][0]["epochs"] == 3.0
  assert json.dumps(plan)  # plain data

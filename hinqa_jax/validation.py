"""What a training stage measures itself against: the validation loss, the best checkpoint by it, and
a length given in epochs.

The val loss is the training loss's own function on the val split's packed rows (same template,
packing and answer-token mask), without dropout, summed over every row: a token-weighted mean.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hinqa_jax import checkpoint, sharding

log = logging.getLogger(__name__)


def with_epochs(config, num_rows: int, stage: str):
  """config with train.num_steps = ceil(num_epochs * packed rows / batch_size) when train.num_epochs > 0."""
  t = config.train
  if t.num_epochs <= 0:
    return config
  steps = max(1, math.ceil(t.num_epochs * num_rows / t.batch_size))
  log.info("%s: %g epoch(s) of %d packed rows at batch %d = %d steps (train.num_epochs; num_steps=%d not used)",
           stage, t.num_epochs, num_rows, t.batch_size, steps, t.num_steps)
  config = copy.deepcopy(config)
  config.train.num_steps = steps
  return config


def selected_checkpoints(stage_dir: str | os.PathLike) -> Path:
  """The checkpoints evaluation, export and a following stage use: best/ (train.keep_best) if written, else checkpoints/."""
  best = Path(stage_dir) / "best"
  has_best = best.is_dir() and any(p.name.isdigit() for p in best.iterdir())
  return best if has_best else Path(stage_dir) / "checkpoints"


class Validator:
  """Every train.eval_every_steps (and at the last step): the val loss, and with train.keep_best a save of the
  state into <stage>/best/ whenever it is the lowest so far (kept across a resume in the checkpoint's meta)."""

  def __init__(self, config, dataset, loss_sums: Callable, mesh, stage_dir: str | os.PathLike):
    t = config.train
    self.every, self.last_step, self.keep_best = t.eval_every_steps, t.num_steps, t.keep_best
    rows = t.batch_size // t.grad_accum  # the training micro-batch: divides over the devices, fits memory
    n = dataset.num_rows
    host = dataset.read_rows(np.arange(n))
    pad = -n % rows  # all-zero rows: segment id 0 is padding, so they weigh nothing
    self.batches = []
    spec = sharding.batch_sharding(mesh)
    for start in range(0, n + pad, rows):
      chunk = {k: np.concatenate([v, np.zeros((pad, v.shape[1]), v.dtype)])[start:start + rows]
               for k, v in host.items()}
      # Every process reads the (small) val pack whole and hands each device its rows.
      self.batches.append({k: jax.make_array_from_callback(v.shape, spec, lambda idx, v=v: v[idx])
                           for k, v in chunk.items()})
    self._sums = jax.jit(lambda trainable, frozen, batch: loss_sums(trainable, frozen, batch, None))
    self.best_mngr = checkpoint.manager(Path(stage_dir) / "best", keep=1) if self.keep_best else None
    self.best = math.inf
    if self.best_mngr is not None and self.best_mngr.latest_step() is not None:
      self.best = float(checkpoint.read_meta(self.best_mngr)["val_loss"])

  def step(self, n: int, state: dict, frozen, meta: dict) -> dict:
    """{"val_loss": device scalar} at an evaluation step n, else {}."""
    if not (self.every > 0 and (n % self.every == 0 or n == self.last_step)):
      return {}
    total, count = jnp.float32(0), jnp.float32(0)
    for batch in self.batches:
      s, c = self._sums(state["trainable"], frozen, batch)
      total, count = total + s, count + c
    val_loss = total / jnp.maximum(count, 1.0)
    if self.best_mngr is not None and float(val_loss) < self.best:
      self.best = float(val_loss)
      checkpoint.save(self.best_mngr, n, state, {**meta, "val_loss": self.best})
      # checkpoint.save is asynchronous; a best save is rare, so wait here: the stage may end or be
      # killed any time after, and evaluation must find best/ whole.
      self.best_mngr.wait_until_finished()
      log.info("step %d: val loss %.4f, the lowest so far: kept in %s", n, self.best, self.best_mngr.directory)
    return {"val_loss": val_loss}

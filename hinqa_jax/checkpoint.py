"""Orbax checkpoints of a training stage: trainable tree, optimizer state and step, plus JSON metadata.

Only what training changes is saved (adapters for LoRA, never the frozen base). The metadata holds the
LoRA rank/alpha/targets and the model shape, so export needs no re-typing and a checkpoint of another
model or rank is refused with a clear message before any step runs. Restores take an abstract target
with shardings, so a checkpoint written on one mesh restores onto another.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(directory: str | os.PathLike, keep: int = 2) -> ocp.CheckpointManager:
  """Orbax manager of a stage's checkpoints; saves are asynchronous (see `save`)."""
  directory = Path(directory).absolute()
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Start writing step `step`; training goes on while it is written.

  Orbax copies the arrays to host memory before this returns (so the next step may donate them) and
  writes them in a background thread, finishing the previous save first. The checkpoint is complete on
  disk (renamed into place) after `mngr.wait_until_finished()`: call it before the stage ends or exits.
  """
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True)


def read_meta(mngr: ocp.CheckpointManager, step: int | None = None) -> dict:
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def check_compatible(meta: dict, expected: dict, where: str) -> None:
  """Refuse a checkpoint whose model shape or LoRA settings differ from the run's."""
  for key in ("model", "lora", "mode"):
    if key in expected and meta.get(key) != expected[key]:
      raise ValueError(f"checkpoint {where}: {key} {meta.get(key)} does not match this run's {expected[key]}")


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
  """(state, meta) at `step` (default latest), placed as `abstract_state`'s shardings say."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                   meta=ocp.args.JsonRestore()))
  return out["state"], out["meta"]


def restore_subtree(directory: str | os.PathLike, key: str, abstract: Any, expected_meta: dict | None = None):
  """One entry of the latest state in a stage's checkpoint dir (M2 takes M1's adapters this way)."""
  mngr = manager(directory)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory} to start from")
  meta = read_meta(mngr, step)
  if expected_meta:
    check_compatible(meta, expected_meta, str(directory))
  full = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  shardings = jax.tree.map(lambda a: a.sharding, abstract)
  return jax.tree.map(lambda x, s: jax.device_put(x, s), full[key], shardings), meta

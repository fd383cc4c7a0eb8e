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


def stored_shapes(directory: str | os.PathLike, step: int) -> dict:
  """Path ("trainable/layers/...") -> shape of every array of a step's state, read from Orbax's metadata only."""
  tree = ocp.StandardCheckpointHandler().metadata(Path(directory).absolute() / str(step) / "state")
  tree = getattr(tree, "tree", tree)
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def restore_subtree(directory: str | os.PathLike, key: str, abstract: Any, expected_meta: dict | None = None):
  """(entry `key` of the latest state in a stage's checkpoint dir, meta), placed as `abstract`'s shardings say.

  Only that entry is read (not the optimizer state), straight onto the target's devices: any mesh, any
  number of processes, whatever mesh wrote it. Shapes are checked against the stored ones first."""
  mngr = manager(directory)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {directory}")
  meta = read_meta(mngr, step)
  if expected_meta:
    check_compatible(meta, expected_meta, str(directory))
  stored = stored_shapes(mngr.directory, step)
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    name = "/".join([key] + [str(getattr(k, "key", k)) for k in path])
    got = stored.get(name)
    if got != tuple(leaf.shape):
      where = "is not in it" if got is None else f"has shape {got}"
      raise ValueError(f"checkpoint {directory} (step {step}): {name} {where}, expected {tuple(leaf.shape)} from "
                       f"its metadata (lora {meta.get('lora')}, model {meta.get('model')})")
  restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
  args = ocp.args.PyTreeRestore(item={key: abstract}, restore_args={key: restore_args}, partial_restore=True)
  return mngr.restore(step, args=ocp.args.Composite(state=args))["state"][key], meta

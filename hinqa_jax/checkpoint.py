"""Orbax checkpoints of a training stage: trainable tree, optimizer state and step, plus JSON metadata.

Only what training changes is saved (adapters for LoRA, never the frozen base). The metadata holds the
LoRA rank/alpha/targets and the model shape, so export needs no re-typing and a checkpoint of another
model or rank is refused with a clear message before any step runs. Restores take an abstract target
with shardings, so a checkpoint written on one mesh restores onto another.

Every save records a fingerprint of each entry of the state (an exact integer checksum of the arrays'
bits, the same for any sharding) in its metadata; a restore recomputes it. A step that fails to restore
(a truncated array file, a deleted _METADATA) or whose fingerprint differs (bytes changed on disk) is
moved aside as `damaged-step<N>-<time>` and the newest intact step is used instead, with a warning
saying which and why. Every process takes the same decision (their verdicts are gathered first).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hinqa_jax import distributed

log = logging.getLogger(__name__)


def manager(directory: str | os.PathLike, keep: int = 2) -> ocp.CheckpointManager:
  """Orbax manager of a stage's checkpoints; saves are asynchronous (see `save`)."""
  directory = Path(directory).absolute()
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(directory, options=options)


def _leaf_sums(x):
  """(sum of the array's words, sum of words times their 1-based position), both mod 2**32: exact, so
  equal whatever the sharding or the reduction order."""
  x = jnp.asarray(x)
  x = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else x
  width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  words = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32).reshape(-1)
  pos = jnp.arange(1, words.size + 1, dtype=jnp.uint32)
  return jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * pos, dtype=jnp.uint32)  # scalars: never sharded


_sums = jax.jit(lambda tree: jax.tree.map(_leaf_sums, tree))


def fingerprint(state: dict) -> dict[str, str]:
  """Entry name -> 16 hex digits over every array of that entry (see _leaf_sums); on every process."""
  out = {}
  for key, tree in state.items():
    sums = [np.asarray(s.addressable_data(0)) if isinstance(s, jax.Array) else np.asarray(s)
            for s in jax.tree.leaves(_sums(tree))]
    words = np.concatenate([np.asarray(s, np.uint32).reshape(-1) for s in sums] or [np.zeros(0, np.uint32)])
    out[key] = hashlib.sha256(words.tobytes()).hexdigest()[:16]
  return out


def save(mngr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Start writing step `step`; training goes on while it is written.

  Orbax copies the arrays to host memory before this returns (so the next step may donate them) and
  writes them in a background thread, finishing the previous save first. The checkpoint is complete on
  disk (renamed into place) after `mngr.wait_until_finished()`: call it before the stage ends or exits.
  """
  meta = {**meta, "fingerprint": fingerprint(state)}
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


def _newest_intact(mngr: ocp.CheckpointManager, load: Callable[[int], tuple[Any, dict]], what: str):
  """load(step) of the newest step that restores and whose fingerprint matches; damaged newer steps are
  moved aside (process 0) and named in a warning. Every process tries each step; their verdicts are
  gathered so all of them pick the same step."""
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {mngr.directory}")
  damaged: dict[int, str] = {}
  for step in steps:
    try:
      out, error = load(step), None
    except ValueError as err:  # a checkpoint of another model or rank: the user's error, not damage
      if "does not match this run" in str(err):
        raise
      out, error = None, f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001 - any failure to read a step makes it a damaged step
      out, error = None, f"{type(err).__name__}: {err}"
    verdicts = distributed.all_gather_json(f"restore {mngr.directory} {step}", error)
    error = next((v for v in verdicts if v), None)
    if error is None:
      state, meta = out
      want = meta.get("fingerprint", {})  # checkpoints from before fingerprints: nothing to compare
      got = fingerprint({k: v for k, v in state.items() if k in want})
      bad = sorted(k for k in got if got[k] != want[k])
      if not bad:
        if damaged:
          _set_aside(mngr, damaged, step, what)
        return out
      error = f"the fingerprint of {', '.join(bad)} differs from the one saved (bytes changed on disk)"
    damaged[step] = error.splitlines()[0][:300]
  raise RuntimeError(f"{what}: no intact checkpoint in {mngr.directory}: " +
                     "; ".join(f"step {k}: {v}" for k, v in damaged.items()))


def _set_aside(mngr: ocp.CheckpointManager, damaged: dict[int, str], used: int, what: str) -> None:
  for step, why in damaged.items():
    log.warning("%s: checkpoint step %d in %s is damaged (%s); using step %d", what, step, mngr.directory, why, used)

  def move():
    for step in damaged:
      src = Path(mngr.directory) / str(step)
      if src.exists():
        src.rename(src.with_name(f"damaged-step{step}-{int(time.time())}"))
  distributed.main_only(f"set aside {mngr.directory}", move)
  mngr.reload()


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, step: int | None = None,
            expected_meta: dict | None = None, what: str = "restore") -> tuple[Any, dict]:
  """(state, meta) of `step`, or of the newest intact step, placed as `abstract_state`'s shardings say."""
  def load(s: int):
    if expected_meta:
      check_compatible(read_meta(mngr, s), expected_meta, str(mngr.directory))
    out = mngr.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                  meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]
  if step is not None:
    return load(step)
  return _newest_intact(mngr, load, what)


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

  def load(step: int):
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
                         f"its metadata (lora {meta.get('lora')}, model {meta.get('model')}): does not match this run")
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    args = ocp.args.PyTreeRestore(item={key: abstract}, restore_args={key: restore_args}, partial_restore=True)
    return mngr.restore(step, args=ocp.args.Composite(state=args))["state"], meta

  state, meta = _newest_intact(mngr, load, f"restore {key}")
  mngr.close()
  return state[key], meta

"""One training stage on a device mesh: LoRA adapters (or, to pretrain a small base, all weights).

Reads top to bottom: mesh, data, model shapes, shardings, init or restore, jitted step, loop.

Resume order (all a pure function of the workdir and the config): the stage's latest Orbax checkpoint
gives the step k, the trainable tree and the optimizer state; data batches and dropout keys are pure
functions of (seed, step), so steps k+1.. are exactly those of an uninterrupted run; metrics.jsonl
lines after step k (written by the interrupted run after its last checkpoint) are dropped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from hinqa_jax import checkpoint, distributed, hf, locks, lora, loss, model, sharding, stages, validation
from hinqa_jax.files import write_atomic
from hinqa_jax.tracking import MetricsWriter

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- model and optimizer from config
def model_config(config, vocab_size: int | None = None) -> model.ModelConfig:
  """The ModelConfig of a run: an HF directory's config.json, or a preset (vocab from the tokenizer)."""
  m = config.model
  over = {"dtype": m.dtype, "param_dtype": m.param_dtype, "remat": m.remat, "layer_loop": m.layer_loop,
          "quantize": m.quantize, "quantize_block": int(m.quantize_block)}
  if m.n_layers:
    over["n_layers"] = int(m.n_layers)
  if m.hf_path:
    return hf.read_config(m.hf_path, m.param_dtype).replace(**over)
  vocab = m.vocab_size or vocab_size
  if vocab:
    over["vocab_size"] = int(vocab)
  return model.ModelConfig.preset(m.preset, **over)


def lora_config(config) -> lora.LoraConfig:
  c = config.lora
  return lora.LoraConfig(rank=c.rank, alpha=c.alpha, targets=tuple(c.targets), dropout=c.dropout, rslora=c.rslora)


def make_optimizer(t) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW after global-norm clipping, at unit rate; the step scales its updates by schedule(stage step).

  The schedule (linear warm-up, cosine decay) runs on the train state's own step, which every stage starts
  at 0, not on optax's update count: that count travels with the optimizer state when M2 keeps M1's
  (train.reset_optimizer=False), and a schedule on it would start stage 2 at the end of its decay.
  """
  decay_steps = max(t.num_steps, t.warmup_steps + 1)
  schedule = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps, decay_steps,
                                                end_value=t.learning_rate * t.min_lr_ratio)
  return optax.chain(optax.clip_by_global_norm(t.clip_norm),
                     optax.adamw(1.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=t.weight_decay)), schedule


def load_base(config, cfg: model.ModelConfig, mesh, cache_dir: str | os.PathLike | None = None) -> model.Params:
  """Frozen base weights, created or read already sharded (each device gets only its shard).

  A quantized base read from HF weights is kept in cache_dir (WORKDIR/base_cache) as an Orbax checkpoint
  keyed on every weight file, the quantization and the dtype: the stages and evaluations of a run share
  one quantization instead of each reading and quantizing the full-precision base again."""
  if not config.model.hf_path:
    abstract = jax.eval_shape(model.init, cfg, jax.random.key(0))
    shardings = sharding.tree_shardings(abstract, mesh)
    return jax.jit(model.init, static_argnums=0, out_shardings=shardings)(cfg, jax.random.key(config.seed))

  def read():  # each process reads from disk only the slices its devices hold
    return hf.load_hf(config.model.hf_path, param_dtype=cfg.param_dtype, quantize=cfg.quantize,
                      quantize_block=cfg.quantize_block,
                      sharding_of=lambda path, shape: NamedSharding(mesh, sharding.param_spec(path, shape, mesh)))[1]
  if not (cfg.quantize and cache_dir):
    return read()
  key = stages.content_hash({"weights": stages.weights_digest(config.model.hf_path), "quantize": cfg.quantize,
                             "block": cfg.quantize_block, "param_dtype": cfg.param_dtype})
  mngr = checkpoint.manager(Path(cache_dir) / f"{cfg.quantize}-{key}", keep=1)
  try:
    if mngr.all_steps():
      abstract = jax.eval_shape(model.init, cfg, jax.random.key(0))
      target = sharding.like_tree(abstract, sharding.tree_shardings(abstract, mesh))
      log.info("quantized base (%s) from %s", cfg.quantize, mngr.directory)
      return checkpoint.restore(mngr, {"params": target}, what="quantized base")[0]["params"]
    params = read()
    checkpoint.save(mngr, 0, {"params": params}, {"hf_path": str(config.model.hf_path), "quantize": cfg.quantize})
    return params
  finally:
    mngr.close()  # the save is complete on disk before the stage goes on


# ----------------------------------------------------------------------------- the step
def loss_sums(trainable, frozen, batch, rng, *, cfg, lcfg, mode, act_sharding=None, loss_cap=None):
  """(sum of next-token NLL over loss-masked targets, number of such targets).

  loss_cap: the packed data's most loss tokens in a row (packing.loss_cap): the head runs only there."""
  params, adapters = (frozen, trainable) if mode == "lora" else (trainable, None)
  seg = batch["segment_ids"]
  x_btd = model.forward_hidden(cfg, params, batch["tokens"], segment_ids=seg, positions=batch["positions"],
                              adapters=adapters, lora_cfg=lcfg if mode == "lora" else None,
                              dropout_rng=rng if (mode == "lora" and lcfg.dropout) else None,
                              activation_sharding=act_sharding)
  # Position t predicts token t+1, only inside one segment and only where token t+1 is an answer token.
  weights = (batch["loss_mask"][:, 1:] > 0) & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
  w = weights.astype(jnp.float32)
  return loss.next_token_nll(cfg, params, x_btd, batch["tokens"], w, loss_cap=loss_cap), jnp.sum(w)  # no [B,T,V] logits


def rng_stream(seed: int, stage: str, purpose: str) -> jax.Array:
  """The key of one random stream. Streams are independent per (seed, stage, purpose): a stage's LoRA init
  ("lora_init") and its dropout ("dropout", then folded with the step and the micro-batch) never share a
  key, and neither do two stages (M1's dropout is not M2's). A random base (no hf_path) is key(seed)."""
  key = jax.random.key(seed)
  for part in (stage, purpose):
    key = jax.random.fold_in(key, zlib.crc32(part.encode()) & 0x7FFFFFFF)
  return key


def make_step(cfg, lcfg, mode: str, optimizer, schedule, grad_accum: int, seed: int, mesh=None,
              loss_cap: int | None = None, stage: str = "train"):
  """The pure train step (state, frozen, batch) -> (state, metrics); jit it with shardings and donation.

  loss_cap: no row of any batch has more loss tokens (see loss_sums); None: the head runs everywhere.
  Dropout at step n, micro-batch i: rng_stream(seed, stage, "dropout") folded with n, then i."""
  act = sharding.activation_sharding(mesh) if mesh is not None else None
  micro_spec = NamedSharding(mesh, P(None, sharding.BATCH_AXES, None)) if mesh is not None else None

  def step(state, frozen, batch):
    base_rng = jax.random.fold_in(rng_stream(seed, stage, "dropout"), state["step"])

    def split(x):  # [B, T] -> [A, B/A, T]; row r goes to micro-batch r % A, so each stays spread over devices
      x = jnp.swapaxes(x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]), 0, 1)
      return x if micro_spec is None else jax.lax.with_sharding_constraint(x, micro_spec)

    micro = jax.tree.map(split, batch)
    grad_fn = jax.value_and_grad(lambda t, mb, r: loss_sums(t, frozen, mb, r, cfg=cfg, lcfg=lcfg, mode=mode,
                                                            act_sharding=act, loss_cap=loss_cap), has_aux=True)

    def accumulate(carry, xs):
      g_acc, l_acc, n_acc = carry
      mb, i = xs
      (l, n), g = grad_fn(state["trainable"], mb, jax.random.fold_in(base_rng, i))
      return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, n_acc + n), None

    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), state["trainable"])
    (g, loss_sum, n), _ = jax.lax.scan(accumulate, (zeros, jnp.float32(0), jnp.float32(0)),
                                       (micro, jnp.arange(grad_accum)))
    denom = jnp.maximum(n, 1.0)  # token-weighted mean over the whole global batch, however it is split
    grads = jax.tree.map(lambda x, p: (x / denom).astype(p.dtype), g, state["trainable"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
    lr = schedule(state["step"])  # the stage's own step (see make_optimizer); logged as applied
    trainable = optax.apply_updates(state["trainable"], jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates))
    metrics = {"loss": loss_sum / denom, "grad_norm": optax.global_norm(grads), "learning_rate": lr,
               "loss_tokens": n, "tokens": jnp.sum(batch["segment_ids"] > 0)}
    return {"step": state["step"] + 1, "trainable": trainable, "opt_state": opt_state}, metrics

  return step


def fresh_state_fn(cfg, lcfg, mode: str, optimizer):
  """(key, base) -> a stage's first state: LoRA adapters (B = 0) or, for full training, the base weights
  themselves, with the optimizer's zero state. The base is an argument: a jit may not close over arrays
  spanning processes."""
  def fresh_state(key, base):
    trainable = lora.init(cfg, lcfg, key) if mode == "lora" else base
    return {"step": jnp.int32(0), "trainable": trainable, "opt_state": optimizer.init(trainable)}
  return fresh_state


def jit_step(config, cfg, lcfg, mode: str, mesh, state_sh, frozen_sh, optimizer, schedule, loss_cap: int | None = None,
             stage: str | None = None):
  """The jitted step a stage runs (and `plan` compiles): state donated, the base frozen and sharded (LoRA),
  batch rows over the mesh's batch axes."""
  batch_sh = sharding.batch_sharding(mesh)
  step = make_step(cfg, lcfg, mode, optimizer, schedule, config.train.grad_accum, config.seed, mesh, loss_cap,
                   stage or config.train.stage)
  return jax.jit(step, in_shardings=(state_sh, frozen_sh if mode == "lora" else None,
                                     {k: batch_sh for k in BATCH_KEYS}),
                 out_shardings=(state_sh, None), donate_argnums=(0,))


def state_shardings(abstract_state, mesh):
  return {"step": sharding.replicated(mesh), "trainable": sharding.tree_shardings(abstract_state["trainable"], mesh),
          "opt_state": sharding.tree_shardings(abstract_state["opt_state"], mesh)}


BATCH_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")


def batch_spec(config, cfg_seq_len: int):
  t = config.train
  return {k: jax.ShapeDtypeStruct((t.batch_size, cfg_seq_len), jnp.int32) for k in BATCH_KEYS}


def check_batch(config, mesh) -> None:
  """A batch that does not split evenly over micro-batches, devices and processes: an error before any step."""
  t = config.train
  div = sharding.batch_divisor(mesh)
  if t.batch_size % t.grad_accum:
    raise ValueError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
  micro = t.batch_size // t.grad_accum
  if micro % div:
    raise ValueError(f"micro-batch of {micro} rows (train.batch_size / train.grad_accum) does not divide over the "
                     f"{div} devices of mesh axes (data, fsdp) = ({mesh.shape['data']}, {mesh.shape['fsdp']})")


def process_rows(batch_sharding: NamedSharding, global_shape: tuple[int, ...]) -> np.ndarray:
  """Sorted positions in the global batch of the rows this process's devices hold.

  Read off the batch sharding itself, so any mesh is fed right: processes whose devices hold replicas of
  one shard (a `tensor` or `fsdp` axis spanning processes) read identical rows, as they must.
  """
  rows: set[int] = set()
  for index in batch_sharding.addressable_devices_indices_map(global_shape).values():
    rows.update(range(*index[0].indices(global_shape[0])))
  return np.array(sorted(rows), np.int64)


def meta_of(config, cfg, lcfg, mode: str) -> dict:
  shape = {k: getattr(cfg, k) for k in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "head_dim")}
  meta = {"model": shape, "mode": mode}
  if mode == "lora":
    meta["lora"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(lcfg).items()}
  return meta


# ----------------------------------------------------------------------------- the stage
def run_stage(config, workdir: str | os.PathLike, stage: str, dataset, **kwargs) -> dict:
  """Train `config.train.num_steps` steps of one stage; resumes from WORKDIR/<stage>/checkpoints if present.

  dataset: a packing.PackedDataset (rows of config.data.seq_len tokens).
  init_from: another stage's checkpoint dir whose trainable tree starts this stage (M2 from M1).
  val_dataset: packed val rows; with train.eval_every_steps > 0 their loss is logged as val_loss.
  Process 0 holds the stage directory's lock (locks.hold) throughout: a second job on it is refused.
  """
  stage_dir = Path(workdir) / stage
  lock = locks.hold(stage_dir, f"train {stage}") if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    return _run_stage(config, stage_dir, stage, dataset, **kwargs)


def _initial_state(config, stage: str, mngr, fresh_state, frozen, abstract, shardings, meta: dict,
                   init_from: str | None) -> dict:
  """The state the stage starts from, sharded: its newest intact checkpoint (damaged newer ones are set aside,
  with a warning), else a fresh one, whose trainable tree (and optimizer state unless train.reset_optimizer)
  is init_from's latest (M2 from M1's final adapters). A checkpoint past train.num_steps is an error."""
  t = config.train
  if mngr.all_steps():
    state, _ = checkpoint.restore(mngr, sharding.like_tree(abstract, shardings), expected_meta=meta, what=stage)
    log.info("%s: resumed at step %d", stage, int(state["step"]))
  else:
    state = jax.jit(fresh_state, out_shardings=shardings)(rng_stream(config.seed, stage, "lora_init"), frozen)
    if init_from:  # same shapes, restored sharded
      prev_mngr = checkpoint.manager(init_from)
      if prev_mngr.latest_step() is None:
        raise FileNotFoundError(f"{stage}: no checkpoint in {init_from} to start from")
      prev, _ = checkpoint.restore(prev_mngr, sharding.like_tree(abstract, shardings), expected_meta=meta,
                                   what=f"{stage} from {init_from}")
      prev_mngr.close()
      state["trainable"] = prev["trainable"]
      if not t.reset_optimizer:
        state["opt_state"] = prev["opt_state"]
  if int(state["step"]) > t.num_steps:
    raise ValueError(f"{stage}: the checkpoint in {mngr.directory} is at step {int(state['step'])}, past "
                     f"train.num_steps={t.num_steps}; raise num_steps or use another workdir/stage")
  return state


def _global_batches(config, dataset, mesh, loss_cap: int | None):
  """step -> that step's global batch ({BATCH_KEYS: [batch_size, seq_len] int32 arrays on the mesh's batch
  sharding}), each process reading only its own rows (process_rows) of dataset.get_batch. A row with more
  loss tokens than loss_cap is an error naming the step (the capped head would drop them)."""
  t = config.train
  batch_sharding = sharding.batch_sharding(mesh)
  batch_shape = (t.batch_size, dataset.seq_len)
  rows = process_rows(batch_sharding, batch_shape)

  def global_batch(step: int) -> dict:
    local = {k: np.asarray(v, np.int32) for k, v in dataset.get_batch(step, t.batch_size, config.seed, rows).items()}
    if loss_cap is not None and (local["loss_mask"] > 0).sum(1).max(initial=0) > loss_cap:
      raise ValueError(f"{dataset.path}: a row at step {step} has more loss tokens than the manifest's "
                       f"loss_cap={loss_cap}; prepare the data again")
    # Each local device takes its slice of the global batch from this process's rows.
    at = lambda index: np.searchsorted(rows, np.arange(*index[0].indices(t.batch_size)))  # noqa: E731
    return {k: jax.make_array_from_callback(batch_shape, batch_sharding, lambda index, a=local[k]: a[at(index)])
            for k in BATCH_KEYS}

  return global_batch


class _StepLog:
  """Each step's metrics, read from the device one step late (step N's after step N+1 is dispatched): a
  non-finite loss stops the stage naming the step; metrics.jsonl every train.log_every steps (tracking.py),
  tokens/s over the time since the last flush (or the last checkpoint's save), a progress bar."""

  def __init__(self, config, stage_dir: Path, stage: str, start: int, progress: bool):
    self.t, self.stage = config.train, stage
    self.writer = MetricsWriter(stage_dir, resume_step=start, enabled=jax.process_index() == 0)
    self.bar = tqdm(total=self.t.num_steps, initial=start, desc=stage,
                    disable=not progress or jax.process_index() != 0)
    self.last: dict = {}  # the last flushed step's metrics, for summary.json
    self.pending = None  # (step, metrics still on the device)
    self.tick = time.perf_counter()  # when the last step was flushed (or a checkpoint saved)

  def flush(self) -> None:
    """Reads the pending step's metrics (a no-op when none): checks the loss, logs, advances the bar."""
    if self.pending is None:
      return
    n, m = self.pending
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not np.isfinite(m["loss"]):
      raise FloatingPointError(f"{self.stage}: loss is {m['loss']} at step {n} (grad norm {m['grad_norm']}); lower "
                               f"train.learning_rate or check the data (loss-masked tokens: {m['loss_tokens']:.0f})")
    now = time.perf_counter()
    m["tokens_per_s"] = m.pop("tokens") / max(now - self.tick, 1e-9)
    self.tick = now
    if n % self.t.log_every == 0 or n == self.t.num_steps:
      self.writer.write(n, m)
    self.bar.update(1)
    self.bar.set_postfix(loss=f"{m['loss']:.4f}")
    self.last, self.pending = {"step": n, **m}, None

  def close(self) -> None:
    self.bar.close()
    self.writer.close()


def _run_stage(config, stage_dir: Path, stage: str, dataset, *, init_from: str | None = None, mode: str = "lora",
               mesh=None, vocab_size: int | None = None, progress: bool = True, val_dataset=None) -> dict:
  """run_stage under the stage's lock; returns the summary with the final state, the base and the configs."""
  t = config.train
  stage_dir.mkdir(parents=True, exist_ok=True)
  mesh = mesh or sharding.make_mesh(dict(config.mesh))
  check_batch(config, mesh)
  cfg = model_config(config, vocab_size)
  lcfg = lora_config(config)
  optimizer, schedule = make_optimizer(t)
  meta = meta_of(config, cfg, lcfg, mode)

  # Shapes and shardings first, nothing allocated; then everything is created already sharded.
  frozen = load_base(config, cfg, mesh, cache_dir=stage_dir.parent / "base_cache")
  frozen_arg = frozen if mode == "lora" else None  # full training starts from the base weights
  fresh_state = fresh_state_fn(cfg, lcfg, mode, optimizer)
  abstract = jax.eval_shape(fresh_state, jax.random.key(0), frozen)
  shardings = state_shardings(abstract, mesh)
  mngr = checkpoint.manager(stage_dir / "checkpoints", keep=config.checkpoint.keep)
  state = _initial_state(config, stage, mngr, fresh_state, frozen, abstract, shardings, meta, init_from)
  start = int(state["step"])

  # Data packed before the cap existed (or rows not from the packer): the head runs everywhere.
  loss_cap = getattr(dataset, "manifest", {}).get("loss_cap")
  step_fn = jit_step(config, cfg, lcfg, mode, mesh, shardings, sharding.tree_shardings(frozen, mesh), optimizer,
                     schedule, loss_cap, stage)
  global_batch = _global_batches(config, dataset, mesh, loss_cap)
  validator = None if val_dataset is None or t.eval_every_steps <= 0 else validation.Validator(
      config, val_dataset, functools.partial(loss_sums, cfg=cfg, lcfg=lcfg, mode=mode,
                                             act_sharding=sharding.activation_sharding(mesh)), mesh, stage_dir)
  steps = _StepLog(config, stage_dir, stage, start, progress)

  try:
    with distributed.Preemption(config.checkpoint.preempt_grace_s) as preempt:
      for step in range(start, t.num_steps):
        state, metrics = step_fn(state, frozen_arg, global_batch(step))  # dispatch step N ...
        steps.flush()  # ... before reading step N-1's metrics
        if validator is not None:
          metrics = {**metrics, **validator.step(step + 1, state, frozen_arg, meta)}
        steps.pending = (step + 1, metrics)
        n = step + 1
        stop = preempt.reached(n)
        if n % config.checkpoint.every_steps == 0 or n == t.num_steps or stop:
          steps.flush()
          checkpoint.save(mngr, n, state, meta)
          steps.tick = time.perf_counter()  # the save's time is not the next step's
        if stop:
          steps.close()
          log.warning("%s: SIGTERM, checkpoint saved at step %d, exiting", stage, n)
          raise SystemExit(143)
      steps.flush()
    steps.close()
    if mngr.latest_step() != t.num_steps:  # e.g. a resumed run that was already complete
      checkpoint.save(mngr, t.num_steps, state, meta)
  finally:  # checkpoints are written in the background (checkpoint.save): on any exit, the last one is
    mngr.close()  # finished on disk before the stage returns, raises or the process goes
  summary = {"stage": stage, "steps": t.num_steps, "final": steps.last, "checkpoints": str(mngr.directory)}
  if jax.process_index() == 0:
    write_atomic(stage_dir / "summary.json", json.dumps(summary, indent=2))
  return {**summary, "state": state, "frozen": frozen, "cfg": cfg, "lcfg": lcfg}

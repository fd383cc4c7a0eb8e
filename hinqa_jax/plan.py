"""Memory and speed plan of a config's train step on N devices, from abstract shapes (no weights in memory).

    python -m hinqa_jax plan --config=configs/tiny.py --devices=8 --device_memory=h100 \\
        --config.model.preset=llama3_8b --config.model.vocab_size=128256 --config.data.seq_len=2048 \\
        --config.model.param_dtype=bfloat16 --config.model.dtype=bfloat16 --config.model.remat=full \\
        --config.mesh.data=1 --config.mesh.fsdp=8

The step is the one training runs (train.make_step, same optimizer, shardings and donation), lowered
on ShapeDtypeStructs and compiled, so the figures are the compiler's, not a guess. When the machine
has fewer devices than asked (a laptop planning a pod), the plan compiles for that many fake CPU
devices; XLA:CPU is then the compiler, see `report` for what that changes.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from hinqa_jax import lora, model, sharding, train

GiB = 2**30
# Memory of one device, in bytes (HBM as sold; what a program may use is a little less).
DEVICE_MEMORY = {"h100": 80 * GiB, "a100_40g": 40 * GiB, "a100_80g": 80 * GiB, "v5e": 16 * GiB,
                 "v5p": 95 * GiB, "v4": 32 * GiB}


# ----------------------------------------------------------------------------- devices
def _forced_cpu_devices() -> int:
  m = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
  return max(int(m.group(1)) if m else 1, jax.config.jax_num_cpu_devices)


def plan_devices(n: int | None) -> list:
  """n devices to compile for: the default backend's if it has n, else n CPU devices.

  Fake CPU devices can only be made before JAX starts its backends; this asks for them then (so
  `python -m hinqa_jax plan --devices=64` needs nothing else). In a process whose JAX already runs
  with fewer, it raises and says how to get them.
  """
  if n is None:
    return jax.devices()
  if n > _forced_cpu_devices():
    try:
      jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
      pass  # JAX already started: only what it has
  devices = jax.devices()
  if len(devices) < n:
    devices = jax.devices("cpu")
  if len(devices) < n:
    raise ValueError(f"plan for {n} devices, but this process's JAX already started with {len(devices)}; "
                     f"run the plan in a fresh process (python -m hinqa_jax plan --devices={n} ...) or set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX is imported")
  return devices[:n]


# ----------------------------------------------------------------------------- FLOPs
def analytic_flops(cfg: model.ModelConfig, lcfg: lora.LoraConfig | None, mode: str, batch: int,
                   seq_len: int) -> dict[str, float]:
  """Matmul FLOPs of one optimizer step over all devices.

  model: forward 2N, backward to activations 2N (LoRA: the frozen weights get no gradient; full: +2N
  for weight gradients), N = every projection kernel and the output head; LoRA adapters 6 per weight;
  attention scores and probs @ V (4*T*H*E per token and layer forward, twice that backward; the whole
  masked T x T square is computed). recompute: what remat adds on top (a second forward of the layers
  for "full"; the attention einsums for "dots", whose batch dimensions make them unsaved).
  """
  tokens = batch * seq_len
  layer = sum(math.prod(lora.proj_shape(cfg, t)) for t in lora.ALL_TARGETS) * cfg.n_layers
  head = cfg.dim * cfg.vocab_size
  attn = 4 * seq_len * cfg.n_heads * cfg.head_dim * cfg.n_layers
  n_lora = sum(lcfg.rank * sum(lora.proj_shape(cfg, t)) for t in lcfg.targets) * cfg.n_layers if mode == "lora" else 0
  grads = 4 if mode == "lora" else 6
  per_token = grads * (layer + head) + 6 * n_lora + 3 * attn
  recompute = {"none": 0, "full": 2 * layer + 2 * n_lora + attn, "dots": attn}[cfg.remat]
  return {"model": float(per_token * tokens), "recompute": float(recompute * tokens), "tokens": tokens,
          "matmul_params": layer + head, "lora_params": n_lora}


_CALL_RE = re.compile(r"\b(calls|body|to_apply|branch_computations|true_computation|false_computation)="
                      r"(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_RE = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_DEF_RE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = [a-z0-9]+\[([0-9,]*)\]")
_HEAD_RE = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\{\s*$")


def hlo_matmul_flops(hlo_text: str) -> float:
  """Dot FLOPs of an optimized HLO module, with each while loop's body counted its known trip count times.

  XLA's cost_analysis counts a loop body once, so a model whose layers run in a scan would show one
  layer's FLOPs; this walks the call graph instead (2 * output size * contracted size per dot).
  """
  comps: dict[str, dict] = {}
  entry, cur = None, None
  for line in hlo_text.splitlines():
    head = _HEAD_RE.match(line)
    if head:
      cur = comps.setdefault(head.group(2), {"flops": 0.0, "calls": [], "shapes": {}})
      entry = head.group(2) if head.group(1) else entry
      continue
    if cur is None or line.startswith("}"):
      continue
    d = _DEF_RE.match(line)
    if d:
      cur["shapes"][d.group(1)] = [int(x) for x in d.group(2).split(",") if x]
    if " dot(" in line and d:
      lhs = re.search(r" dot\([^%]*%([\w.\-]+)", line).group(1)
      contract = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", line).group(1)
      lhs_shape = cur["shapes"][lhs]
      k = math.prod(lhs_shape[int(i)] for i in contract.split(",") if i)
      cur["flops"] += 2.0 * math.prod(cur["shapes"][d.group(1)]) * k
    trip = _TRIP_RE.search(line)
    for kind, target in _CALL_RE.findall(line):
      mult = int(trip.group(1)) if (kind == "body" and trip) else 1
      for name in re.findall(r"%?([\w.\-]+)", target.strip("{}")):
        cur["calls"].append((name, mult))

  memo: dict[str, float] = {}

  def total(name: str) -> float:
    if name not in memo:
      c = comps.get(name, {"flops": 0.0, "calls": []})
      memo[name] = c["flops"] + sum(m * total(callee) for callee, m in c["calls"])
    return memo[name]

  return total(entry) if entry else 0.0


# ----------------------------------------------------------------------------- the plan
def _shard_bytes(tree: Any, shardings: Any) -> int:
  """Bytes one device holds of a tree: each leaf's shard shape times its item size."""
  sizes = jax.tree.map(lambda x, s: math.prod(s.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize, tree, shardings)
  return int(sum(jax.tree.leaves(sizes)))


def _nbytes(tree: Any) -> int:
  return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _vocab(config) -> int | None:
  """The vocabulary training would use: a preset without model.vocab_size takes the tokenizer's."""
  m = config.model
  if m.hf_path or m.vocab_size or not Path(config.tokenizer.path).exists():
    return None
  from hinqa_jax.tokenizer import load_tokenizer
  return len(load_tokenizer(config.tokenizer.path))


def _without_missing_weights(config):
  """(config, note): a model.hf_path not on this machine gives way to model.preset (planning needs shapes only)."""
  path = config.model.hf_path
  if not path or (Path(path) / "config.json").is_file():
    return config, ""
  from hinqa_jax.config import default_config
  if config.model.preset == default_config().model.preset:
    raise ValueError(f"model.hf_path {path} has no config.json here and the config names no preset; to plan "
                     f"without the weights give the shapes, e.g. --config.model.preset=llama3_8b")
  config = config.copy_and_resolve_references()
  config.model.hf_path = ""
  return config, f"{path} has no config.json here: planned with the shapes of preset {config.model.preset}"


def plan(config, devices: int | None = None, vocab_size: int | None = None, evaluation: bool = True) -> dict:
  """Compile the config's train step for `devices` devices from abstract shapes; bytes, FLOPs, fits.
  With `evaluation`, also plan_eval on one device and on all of them (under "eval").

  Byte figures are per device unless named otherwise; a leaf's shard is its size over the product of
  the mesh axes sharding it. The weights need not be on this machine (see _without_missing_weights).
  """
  config, note = _without_missing_weights(config)
  devs = plan_devices(devices)
  mesh = sharding.make_mesh(dict(config.mesh), devices=devs)
  train.check_batch(config, mesh)
  t, mode = config.train, config.train.mode
  cfg = _scanned(train.model_config(config, vocab_size or _vocab(config)))
  lcfg = train.lora_config(config)
  optimizer, schedule = train.make_optimizer(t)

  base = jax.eval_shape(model.init, cfg, jax.random.key(0))
  init_trainable = (lambda k: lora.init(cfg, lcfg, k)) if mode == "lora" else (lambda k: model.init(cfg, k))
  abstract = jax.eval_shape(lambda k: (lambda tr: {"step": jnp.int32(0), "trainable": tr,
                                                   "opt_state": optimizer.init(tr)})(init_trainable(k)),
                            jax.random.key(0))
  state_sh = train.state_shardings(abstract, mesh)
  base_sh = sharding.tree_shardings(base, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  specs = train.batch_spec(config, config.data.seq_len)
  frozen = sharding.like_tree(base, base_sh) if mode == "lora" else None
  step = jax.jit(train.make_step(cfg, lcfg, mode, optimizer, schedule, t.grad_accum, config.seed, mesh),
                 in_shardings=(state_sh, base_sh if mode == "lora" else None, {k: batch_sh for k in specs}),
                 out_shardings=(state_sh, None), donate_argnums=(0,))
  platform = devs[0].platform
  options = _cpu_options(devs, cfg)
  tick = time.perf_counter()
  with _accelerator_rng_lowering(platform):
    lowered = step.lower(sharding.like_tree(abstract, state_sh), frozen,
                         {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh) for k, v in specs.items()})
  compiled = lowered.compile(options)
  compile_s = time.perf_counter() - tick

  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  n = len(devs)
  per_device = {
      "base": _shard_bytes(base, base_sh) if mode == "lora" else 0,
      "trainable": _shard_bytes(abstract["trainable"], state_sh["trainable"]),
      "optimizer": _shard_bytes(abstract["opt_state"], state_sh["opt_state"]),
      "batch": _shard_bytes(specs, {k: batch_sh for k in specs}),
      "arguments": int(mem.argument_size_in_bytes),
      "outputs": int(mem.output_size_in_bytes),
      "aliased": int(mem.alias_size_in_bytes),
      "temp": int(mem.temp_size_in_bytes),
      "code": int(mem.generated_code_size_in_bytes),
  }
  # Donated state buffers are reused for the new state: count them once.
  per_device["total"] = (per_device["arguments"] + per_device["outputs"] - per_device["aliased"]
                         + per_device["temp"] + per_device["code"])
  flops = analytic_flops(cfg, lcfg, mode, t.batch_size, config.data.seq_len)
  return {
      "model": {"preset": config.model.preset if not config.model.hf_path else config.model.hf_path,
                "vocab_size": cfg.vocab_size, "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
                "remat": cfg.remat, "mode": mode, "lora_rank": lcfg.rank if mode == "lora" else None,
                "lora_targets": list(lcfg.targets) if mode == "lora" else None, "note": note},
      "mesh": dict(mesh.shape), "devices": n, "platform": platform, "compile_s": compile_s,
      "batch_size": t.batch_size, "seq_len": config.data.seq_len, "grad_accum": t.grad_accum,
      "base_params": model.count_params(base),
      "trainable_params": model.count_params(abstract["trainable"]),
      "unique_bytes": {"base": _nbytes(base) if mode == "lora" else 0, "trainable": _nbytes(abstract["trainable"]),
                       "optimizer": _nbytes(abstract["opt_state"])},
      "per_device": per_device,
      "all_devices": {k: v * n for k, v in per_device.items() if k not in ("arguments", "outputs", "aliased")},
      "flops": {"compiled_per_device": hlo_matmul_flops(compiled.as_text()),
                "xla_cost_analysis_per_device": float(cost.get("flops", 0.0)),
                "analytic_model": flops["model"], "analytic_recompute": flops["recompute"],
                "analytic_per_device": (flops["model"] + flops["recompute"]) / n, "tokens": flops["tokens"]},
      "fits": {name: per_device["total"] <= cap for name, cap in DEVICE_MEMORY.items()},
      "eval": ([plan_eval(config, k, vocab_size) for k in sorted({1, n})] if evaluation else []),
  }


# ----------------------------------------------------------------------------- evaluation
def plan_eval(config, devices: int | None = None, vocab_size: int | None = None) -> dict:
  """Compile evaluation's generate (prefill + the decode loop) from abstract shapes; bytes per device.

  The config's eval batch (config.eval.batch_size rows, cut by decode.token_batch_rows), prompts of the
  longest length evaluation allows (data.seq_len - eval.max_new_tokens), eval.max_new_tokens new
  tokens; weights and adapters sharded over all the devices (fsdp), rows over them where they split.
  """
  from hinqa_jax import decode
  config, note = _without_missing_weights(config)
  devs = plan_devices(devices)
  n = len(devs)
  mesh = sharding.make_mesh({"data": 1, "fsdp": n, "tensor": 1}, devices=devs)
  cfg = _scanned(train.model_config(config, vocab_size or _vocab(config)))
  lcfg = train.lora_config(config)
  e = config.eval
  new = e.max_new_tokens
  prompt = decode.bucket(max(config.data.seq_len - new, 1), 16)
  rows = decode.token_batch_rows(prompt, new, e.batch_size)
  key = jax.random.key(0)
  base = jax.eval_shape(model.init, cfg, key)
  base = sharding.like_tree(base, sharding.tree_shardings(base, mesh))
  adapters = None
  if config.train.mode == "lora":
    adapters = jax.eval_shape(lambda k: lora.init(cfg, lcfg, k), key)
    adapters = sharding.like_tree(adapters, sharding.tree_shardings(adapters, mesh))
  split = rows % n == 0
  row_sh = sharding.batch_sharding(mesh) if split else sharding.replicated(mesh)
  cache_sh = (NamedSharding(mesh, P(sharding.BATCH_AXES, None, None, None)) if split else sharding.replicated(mesh))
  cache = jax.eval_shape(lambda: decode.init_cache(cfg, rows, prompt + new))
  cache = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=cache_sh), cache)
  ids = jax.ShapeDtypeStruct((rows, prompt), jnp.int32, sharding=row_sh)
  lowered = decode.generate_fn().lower(
      cfg, base, adapters, lcfg if adapters is not None else None, ids, ids, jax.ShapeDtypeStruct((1,), jnp.int32),
      jax.eval_shape(lambda: key), cache, max_new_tokens=new, temperature=0.0, top_k=0, top_p=1.0,
      mesh=mesh if split else None)  # rows split: the prefill keeps them split
  tick = time.perf_counter()
  mem = lowered.compile(_cpu_options(devs, cfg)).memory_analysis()
  compile_s = time.perf_counter() - tick
  per_device = {"arguments": int(mem.argument_size_in_bytes), "outputs": int(mem.output_size_in_bytes),
                "aliased": int(mem.alias_size_in_bytes), "temp": int(mem.temp_size_in_bytes),
                "code": int(mem.generated_code_size_in_bytes),
                "weights": _shard_bytes(base, jax.tree.map(lambda x: x.sharding, base)),
                "cache": _shard_bytes(cache, jax.tree.map(lambda x: cache_sh, cache))}
  per_device["total"] = (per_device["arguments"] + per_device["outputs"] - per_device["aliased"]
                         + per_device["temp"] + per_device["code"])
  return {"devices": n, "rows": rows, "batch_size": e.batch_size, "prompt_len": prompt, "max_new_tokens": new,
          "compile_s": compile_s, "per_device": per_device, "note": note,
          "fits": {name: per_device["total"] <= cap for name, cap in DEVICE_MEMORY.items()}}


@contextlib.contextmanager
def _accelerator_rng_lowering(platform: str):
  """Lower threefry (LoRA dropout's random bits) for CPU as JAX does for GPU and TPU: unrolled.

  JAX's CPU rule rolls threefry's rounds into a while loop (to compile faster); XLA:CPU then keeps
  the loop's full-size uint32 counters and state live, four words per random element (0.9 GB at the
  peak of the 8B step), where a GPU or TPU fuses the whole hash into the mask. Private JAX API: if it
  moved, the plan keeps the CPU rule (and over-counts).
  """
  try:
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32 as tf
    table, prim, rule = mlir._platform_specific_lowerings["cpu"], tf.threefry2x32_p, tf._threefry2x32_lowering_rule
  except (ImportError, AttributeError, KeyError):
    table = None
  if platform == "cpu" and table is None:
    print("plan: JAX's threefry lowering moved; the CPU rule stays, so the temporaries are over-counted "
          "(~0.6-0.9 GB at 8B with LoRA dropout)")
  if platform != "cpu" or table is None:
    yield
    return
  old = table.get(prim)
  mlir.register_lowering(prim, rule, platform="cpu")
  try:
    yield
  finally:
    if old is None:
      table.pop(prim, None)
    else:
      table[prim] = old


def _scanned(cfg):
  """The plan is of an accelerator run, which scans its layers: layer_loop auto means scan here too, even
  when the plan compiles for CPU devices (where a run would unroll them)."""
  return cfg.replace(layer_loop="scan") if cfg.layer_loop == "auto" else cfg


def _cpu_options(devs, cfg):
  # XLA:CPU has no bf16 matmul: it converts weights to f32, and loop-invariant code motion would then
  # hoist an f32 copy of every layer's weights out of a loop, a buffer no GPU or TPU makes.
  if devs[0].platform == "cpu" and "float32" not in (cfg.dtype, cfg.param_dtype):
    return {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}
  return None


def eval_report(p: dict, device_memory: str | None = None) -> str:
  """The eval plan as text: bytes per device and what fits."""
  pd = p["per_device"]
  lines = [f"eval plan: generate {p['rows']} rows (eval.batch_size {p['batch_size']}) x {p['prompt_len']}-token prompts"
           f" + {p['max_new_tokens']} new tokens on {p['devices']} device(s), weights sharded over all;"
           f" compiled in {p['compile_s']:.1f} s",
           f"  per device: weights {_gb(pd['weights'])}, KV cache {_gb(pd['cache'])}, temporaries {_gb(pd['temp'])},"
           f" compiled total {_gb(pd['total'])}"]
  for name in [device_memory] if device_memory else list(DEVICE_MEMORY):
    cap = device_capacity(name)
    verdict = "fits" if pd["total"] <= cap else "does NOT fit"
    lines.append(f"  {name:10} {cap / GiB:5.0f} GiB: {verdict} ({100 * pd['total'] / cap:.0f}% of it)")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- the report
def device_capacity(name: str) -> int:
  """Bytes of a named device (h100, v5e, ...) or of a size such as 24GB or 24GiB."""
  key = name.lower()
  if key in DEVICE_MEMORY:
    return DEVICE_MEMORY[key]
  m = re.fullmatch(r"([\d.]+)\s*(gib|gb)", key)
  if not m:
    raise ValueError(f"unknown device {name!r}; known: {sorted(DEVICE_MEMORY)} or a size like 24GB / 24GiB")
  return int(float(m.group(1)) * (GiB if m.group(2) == "gib" else 1e9))


def _gb(x: float) -> str:
  return f"{x / 1e9:.2f} GB" if x >= 1e7 or x == 0 else f"{x / 1e6:.2f} MB"


def report(p: dict, device_memory: str | None = None) -> str:
  """A plain-text table of a plan: bytes per device and in total, FLOPs, and whether it fits."""
  m, pd, f = p["model"], p["per_device"], p["flops"]
  what = (f"LoRA r={m['lora_rank']} on {len(m['lora_targets'])} projections" if m["mode"] == "lora"
          else "full fine-tuning")
  mesh = " ".join(f"{k}={v}" for k, v in p["mesh"].items())
  n = p["devices"]
  lines = [
      f"plan: {m['preset']} (vocab {m['vocab_size']}), {what}, batch {p['batch_size']} x {p['seq_len']} tokens"
      f" (grad_accum {p['grad_accum']}), remat {m['remat']}, weights {m['param_dtype']}, compute {m['dtype']}",
      f"mesh: {mesh} on {n} {p['platform']} devices; step compiled in {p['compile_s']:.1f} s",
      *([f"model: {m['note']}"] if m.get("note") else []),
      f"parameters: base {p['base_params']:,}, trainable {p['trainable_params']:,}",
      "",
      f"{'':32}{'per device':>14}{'all devices':>14}{'unique':>14}",
  ]
  rows = [("base weights (frozen)", "base"), ("trainable weights", "trainable"), ("optimizer state", "optimizer"),
          ("batch", "batch")]
  for label, key in rows:
    uniq = _gb(p["unique_bytes"][key]) if key in p["unique_bytes"] else ""
    lines.append(f"{label:32}{_gb(pd[key]):>14}{_gb(pd[key] * n):>14}{uniq:>14}")
  lines.append(f"{'activations and temporaries':32}{_gb(pd['temp']):>14}{_gb(pd['temp'] * n):>14}")
  lines.append(f"{'compiled total':32}{_gb(pd['total']):>14}{_gb(pd['total'] * n):>14}")
  lines.append(f"  (compiled: arguments {_gb(pd['arguments'])} + outputs {_gb(pd['outputs'])} - donated "
               f"{_gb(pd['aliased'])} + temp {_gb(pd['temp'])} + code {_gb(pd['code'])})")
  lines += [
      "",
      f"FLOPs per step: compiled {f['compiled_per_device']:.3e} per device ({f['compiled_per_device'] * n:.3e} in all;"
      f" matmuls of the optimized HLO, loop trip counts applied)",
      f"                analytic {f['analytic_per_device']:.3e} per device (model {f['analytic_model']:.3e}"
      f" + remat recompute {f['analytic_recompute']:.3e} in all, {f['tokens']:,} tokens)",
      f"                XLA cost_analysis says {f['xla_cost_analysis_per_device']:.3e} per device: it counts each"
      f" loop body (the layer scan) once",
  ]
  names = [device_memory] if device_memory else list(DEVICE_MEMORY)
  lines += ["", f"fits one device's memory ({_gb(pd['total'])} needed)?"]
  for name in names:
    cap = device_capacity(name)
    verdict = "fits" if pd["total"] <= cap else "does NOT fit"
    lines.append(f"  {name:10} {cap / GiB:5.0f} GiB: {verdict} ({100 * pd['total'] / cap:.0f}% of it)")
  if device_memory and pd["total"] > device_capacity(device_memory):
    lines.append("  to fit: shard the weights (--config.mesh.fsdp), --config.model.remat=full, or fewer rows per "
                 "step (--config.train.grad_accum)")
  lines += ["", *(eval_report(e, device_memory) for e in p.get("eval", []))]
  if p["platform"] == "cpu":
    bf16 = "bfloat16" in (m["dtype"], m["param_dtype"])
    lines.append("note: compiled by XLA:CPU, which " + ("writes each bf16 matmul's f32 accumulator out before rounding"
                 " it (a GPU fuses that) and " if bf16 else "") + "fuses and schedules differently from GPU/TPU: the totals are an"
                 " estimate. Run the plan on the target machine for its own compiler's figures.")
  return "\n".join(lines)

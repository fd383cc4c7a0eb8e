"""Plan before you rent: compile a config's train step and evaluation's generate for a target with that
target's real compiler, from abstract shapes (no weights in memory, no accelerator needed).

    .venv-aot/bin/python -m hinqa_jax plan --config=configs/vatika_llama3_8b_m2.py --target=v5e-8 --json=plan.json

A TPU target compiles with libtpu, a GPU target with deviceless XLA:GPU (targets.py; both installed by
`make aot`); `cpu-N` compiles for N fake CPU devices with XLA:CPU, which is a CPU run's plan, not an
accelerator's. The step is the one `train` runs (train.jit_step: same optimizer, shardings, donation,
loss_cap); the figures are the compiler's (`memory_analysis()`), the kernels those named in the
compiled HLO. Step time, tokens/s and MFU are a roofline estimate from the target's public peaks.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from hinqa_jax import decode, hlo, lora, loss, model, sharding, targets, train
from hinqa_jax.config import default_config
from hinqa_jax.tokenizer import load_tokenizer

GiB = 2**30


# ----------------------------------------------------------------------------- FLOPs
def analytic_flops(cfg: model.ModelConfig, lcfg: lora.LoraConfig | None, mode: str, batch: int,
                   seq_len: int, head_positions: int | None = None) -> dict[str, float]:
  """Matmul FLOPs of one optimizer step over all devices.

  model: forward 2N, backward to activations 2N (LoRA: the frozen weights get no gradient; full: +2N
  for weight gradients), N = every projection kernel; the head likewise on `head_positions` positions
  per row (loss_cap; default all), rounded up to whole chunks of loss.chunk_len as the loss runs it; LoRA adapters 6 per weight; attention scores and probs @ V
  (4*T*H*E per token and layer forward, twice that backward; the whole masked T x T square).
  recompute: what remat adds on top (a second forward of the layers for "full"; the attention einsums
  for "dots", whose batch dimensions make them unsaved).
  """
  tokens = batch * seq_len
  head_t = min(head_positions or seq_len, seq_len)
  chunk = loss.chunk_len(batch, head_t, cfg.vocab_size)
  head_tokens = batch * (-(-head_t // chunk) * chunk)
  layer = sum(math.prod(lora.proj_shape(cfg, t)) for t in lora.ALL_TARGETS) * cfg.n_layers
  head = cfg.dim * cfg.vocab_size
  attn = 4 * seq_len * cfg.n_heads * cfg.head_dim * cfg.n_layers
  n_lora = sum(lcfg.rank * sum(lora.proj_shape(cfg, t)) for t in lcfg.targets) * cfg.n_layers if mode == "lora" else 0
  grads = 4 if mode == "lora" else 6
  model_flops = (grads * layer + 6 * n_lora + 3 * attn) * tokens + grads * head * head_tokens
  recompute = {"none": 0, "full": 2 * layer + 2 * n_lora + attn, "dots": attn}[cfg.remat]
  return {"model": float(model_flops), "recompute": float(recompute * tokens), "tokens": tokens,
          "attention": float(3 * attn * tokens), "matmul_params": layer + head, "lora_params": n_lora}


# ----------------------------------------------------------------------------- helpers
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
  return len(load_tokenizer(config.tokenizer.path))


def _without_missing_weights(config):
  """(config, note): a model.hf_path not on this machine gives way to model.preset (planning needs shapes only)."""
  path = config.model.hf_path
  if not path or (Path(path) / "config.json").is_file():
    return config, ""
  if config.model.preset == default_config().model.preset:
    raise ValueError(f"model.hf_path {path} has no config.json here and the config names no preset; to plan "
                     f"without the weights give the shapes, e.g. --config.model.preset=llama3_8b")
  config = config.copy_and_resolve_references()
  config.model.hf_path = ""
  return config, f"{path} has no config.json here: planned with the shapes of preset {config.model.preset}"


def _compile(lowered):
  """(compiled, None), or (None, the compiler's message) when it refuses a program too big for the device:
  the TPU compiler stops there, where XLA:GPU compiles and reports the bytes."""
  try:
    return lowered.compile(), None
  except jax.errors.JaxRuntimeError as err:
    if "RESOURCE_EXHAUSTED" not in str(err):
      raise
    return None, str(err).strip().splitlines()[0]


def _memory(compiled) -> dict[str, int | None]:
  if compiled is None:
    return dict.fromkeys(("arguments", "outputs", "aliased", "temp", "code", "total"))
  mem = compiled.memory_analysis()
  out = {"arguments": int(mem.argument_size_in_bytes), "outputs": int(mem.output_size_in_bytes),
         "aliased": int(mem.alias_size_in_bytes), "temp": int(mem.temp_size_in_bytes),
         "code": int(mem.generated_code_size_in_bytes)}
  # Donated buffers are reused for the outputs: counted once.
  out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temp"] + out["code"]
  return out


def _fit(target: targets.Target, total: int | None, error: str | None = None) -> dict:
  if error:
    return {"fits": False, "memory": target.memory, "used": None, "compiler": error}
  if not target.memory:
    return {"fits": None, "memory": 0, "used": None}
  return {"fits": total <= target.memory, "memory": target.memory, "used": total / target.memory}


def _estimate(target: targets.Target, flops_per_device: float, model_flops: float, stream_bytes: float,
              tokens: int) -> dict | None:
  """Roofline: the step takes at least its FLOPs at peak and its HBM traffic at full bandwidth."""
  if not target.peak_flops:
    return None
  compute_s = flops_per_device / target.peak_flops
  memory_s = stream_bytes / target.hbm_bandwidth
  step_s = max(compute_s, memory_s)
  return {"step_s": step_s, "compute_s": compute_s, "memory_s": memory_s, "tokens_per_s": tokens / step_s,
          "mfu": model_flops / (step_s * target.peak_flops * target.devices), "bound": "compute" if compute_s >= memory_s else "memory"}


# ----------------------------------------------------------------------------- the train step
def plan(config, target: str | targets.Target = "cpu-1", *, loss_cap: int | None = None, vocab_size: int | None = None,
         evaluation: bool = True, hlo_text: bool = False) -> dict:
  """Compile the config's train step for `target` from abstract shapes: bytes per device, kernels, FLOPs,
  fit and a roofline estimate; with `evaluation`, also plan_eval on one of the target's devices and on all;
  with `hlo_text`, the compiled HLO under "hlo" (not JSON material: large).

  loss_cap: the packed data's most loss tokens in a row (train gets it from the data's manifest; None:
  the head runs on every position, an upper bound). Byte figures are per device unless named otherwise.
  """
  target = targets.get(target) if isinstance(target, str) else target
  config, note = _without_missing_weights(config)
  devs = targets.devices(target)
  mesh = sharding.make_mesh(dict(config.mesh), devices=devs)
  train.check_batch(config, mesh)
  t, mode = config.train, config.train.mode
  cfg = train.model_config(config, vocab_size or _vocab(config))
  lcfg = train.lora_config(config)
  optimizer, schedule = train.make_optimizer(t)

  base = jax.eval_shape(model.init, cfg, jax.random.key(0))
  abstract = jax.eval_shape(train.fresh_state_fn(cfg, lcfg, mode, optimizer), jax.random.key(0), base)
  state_sh = train.state_shardings(abstract, mesh)
  base_sh = sharding.tree_shardings(base, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  specs = train.batch_spec(config, config.data.seq_len)
  step = train.jit_step(config, cfg, lcfg, mode, mesh, state_sh, base_sh, optimizer, schedule, loss_cap)
  tick = time.perf_counter()
  compiled, error = _compile(step.lower(sharding.like_tree(abstract, state_sh),
                                        sharding.like_tree(base, base_sh) if mode == "lora" else None,
                                        {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
                                         for k, v in specs.items()}))
  compile_s = time.perf_counter() - tick
  text = compiled.as_text() if compiled is not None else ""

  n = len(devs)
  per_device = {"base": _shard_bytes(base, base_sh) if mode == "lora" else 0,
                "trainable": _shard_bytes(abstract["trainable"], state_sh["trainable"]),
                "optimizer": _shard_bytes(abstract["opt_state"], state_sh["opt_state"]),
                "batch": _shard_bytes(specs, {k: batch_sh for k in specs}), **_memory(compiled)}
  flops = analytic_flops(cfg, lcfg, mode, t.batch_size, config.data.seq_len, loss_cap)
  kernels = hlo.kernels(text)
  compiled_flops = hlo.hlo_matmul_flops(text)
  # Pallas kernels are opaque custom calls to the HLO: their attention FLOPs come from the formula.
  fused_attention = any(k in kernels for k in ("tpu_custom_call", "__gpu$xla.gpu.triton"))
  attention_share = (flops["attention"] * (1 + (cfg.remat != "none") / 3)) / n if fused_attention else 0.0
  step_flops = compiled_flops + attention_share if compiled is not None else (flops["model"] + flops["recompute"]) / n
  # HBM traffic per step, at least: every layer's weights (gathered) read once per pass (forward,
  # backward, remat's second forward) and the trainable state and optimizer read and written.
  weight_bytes = _nbytes({k: v for k, v in base.items() if k != "embed_tokens"}) if mode == "lora" else 0
  passes = 3 if cfg.remat == "full" else 2
  stream = passes * weight_bytes + 3 * (per_device["trainable"] + per_device["optimizer"])
  return {
      "target": {"name": target.name, "platform": target.platform, "devices": n, "hosts": target.hosts,
                 "device_kind": devs[0].device_kind, "memory": target.memory, "peak_flops": target.peak_flops,
                 "hbm_bandwidth": target.hbm_bandwidth},
      "model": {"preset": config.model.preset if not config.model.hf_path else config.model.hf_path,
                "vocab_size": cfg.vocab_size, "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
                "quantize": cfg.quantize,
                "remat": cfg.remat, "mode": mode, "lora_rank": lcfg.rank if mode == "lora" else None,
                "lora_targets": list(lcfg.targets) if mode == "lora" else None, "note": note},
      "mesh": dict(mesh.shape), "devices": n, "platform": devs[0].platform, "compile_s": compile_s,
      "batch_size": t.batch_size, "seq_len": config.data.seq_len, "grad_accum": t.grad_accum, "loss_cap": loss_cap,
      "base_params": model.count_params(base), "trainable_params": model.count_params(abstract["trainable"]),
      "unique_bytes": {"base": _nbytes(base) if mode == "lora" else 0, "trainable": _nbytes(abstract["trainable"]),
                       "optimizer": _nbytes(abstract["opt_state"])},
      "per_device": per_device,
      "fit": _fit(target, per_device["total"], error),
      "kernels": kernels,
      "attention_kernel": _attention_kernel(kernels),
      "flops": {"compiled_matmul_per_device": compiled_flops, "kernel_attention_per_device": attention_share,
                "per_device": step_flops, "analytic_model": flops["model"], "analytic_recompute": flops["recompute"],
                "tokens": flops["tokens"]},
      "estimate": _estimate(target, step_flops, flops["model"], stream, flops["tokens"]),
      "eval": ([plan_eval(config, target, k, vocab_size, hlo_text) for k in sorted({1, n})] if evaluation else []),
      **({"hlo": text} if hlo_text else {}),
  }


def _attention_kernel(kernels: dict[str, list[str]]) -> str:
  """What the attention compiled to: the Pallas kernel's names, else "XLA (no fused kernel)"."""
  if not kernels:
    return "not compiled (does not fit)"
  for call in ("tpu_custom_call", "__gpu$xla.gpu.triton"):
    names = [k for k in kernels.get(call, []) if "mha" in k or "attention" in k or "splash" in k]
    if names:
      return f"{call}: {', '.join(names)}"
  cudnn = [k for k in kernels if k.startswith("__cudnn$fmha")]
  return f"cuDNN: {', '.join(cudnn)}" if cudnn else "XLA (no fused kernel)"


# ----------------------------------------------------------------------------- evaluation
def plan_eval(config, target: str | targets.Target = "cpu-1", devices: int | None = None,
              vocab_size: int | None = None, hlo_text: bool = False) -> dict:
  """Compile evaluation's generate (prefill + the decode loop) from abstract shapes on `devices` of the
  target's devices (default all); bytes per device.

  The config's eval batch (config.eval.batch_size rows, cut by decode.token_batch_rows), prompts of the
  longest length evaluation allows (data.seq_len - eval.max_new_tokens), eval.max_new_tokens new
  tokens; weights and adapters sharded over all the devices (fsdp), rows over them where they split.
  """
  target = targets.get(target) if isinstance(target, str) else target
  config, note = _without_missing_weights(config)
  devs = targets.devices(target)[:devices]
  n = len(devs)
  mesh = sharding.make_mesh({"data": 1, "fsdp": n, "tensor": 1}, devices=devs)
  cfg = train.model_config(config, vocab_size or _vocab(config))
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
  platform = devs[0].platform
  lowered = decode.generate_fn(platform).lower(
      cfg, base, adapters, lcfg if adapters is not None else None, ids, ids, jax.ShapeDtypeStruct((1,), jnp.int32),
      jax.eval_shape(lambda: key), cache, max_new_tokens=new, temperature=0.0, top_k=0, top_p=1.0,
      mesh=mesh if split else None, platform=platform)  # rows split: the prefill keeps them split
  tick = time.perf_counter()
  compiled, error = _compile(lowered)
  compile_s = time.perf_counter() - tick
  per_device = {**_memory(compiled), "weights": _shard_bytes(base, jax.tree.map(lambda x: x.sharding, base)),
                "cache": _shard_bytes(cache, jax.tree.map(lambda x: cache_sh, cache))}
  text = compiled.as_text() if compiled is not None else ""
  kernels = hlo.kernels(text)
  return {**({"hlo": text} if hlo_text else {}), "devices": n, "rows": rows, "batch_size": e.batch_size, "prompt_len": prompt, "max_new_tokens": new,
          "compile_s": compile_s, "per_device": per_device, "note": note, "fit": _fit(target, per_device["total"], error),
          "kernels": kernels, "attention_kernel": _attention_kernel(kernels)}


# ----------------------------------------------------------------------------- the report
def _gb(x: float | None) -> str:
  if x is None:
    return "n/a"
  return f"{x / 1e9:.2f} GB" if x >= 1e9 or x == 0 else f"{x / 1e6:.2f} MB"


def _fit_line(fit: dict, total: int | None, target: dict) -> str:
  if fit.get("compiler"):
    return (f"  does NOT fit one {target['device_kind']} ({fit['memory'] / GiB:.1f} GiB): the compiler stops: "
            f"{fit['compiler']}")
  if fit["fits"] is None:
    return f"  fits: not judged ({target['name']} is XLA:CPU; plan with --target=<TPU or GPU> for a fit)"
  verdict = "fits" if fit["fits"] else "does NOT fit"
  return (f"  {verdict} one {target['device_kind']} ({fit['memory'] / GiB:.1f} GiB): {_gb(total)} is "
          f"{100 * fit['used']:.0f}% of it")


def eval_report(p: dict, target: dict) -> str:
  """The eval plan as text: bytes per device and the fit."""
  pd = p["per_device"]
  return "\n".join([
      f"eval plan: generate {p['rows']} rows (eval.batch_size {p['batch_size']}) x {p['prompt_len']}-token prompts"
      f" + {p['max_new_tokens']} new tokens on {p['devices']} device(s), weights sharded over all;"
      f" compiled in {p['compile_s']:.1f} s; prefill attention: {p['attention_kernel']}",
      f"  per device: weights {_gb(pd['weights'])}, KV cache {_gb(pd['cache'])}, temporaries {_gb(pd['temp'])},"
      f" compiled total {_gb(pd['total'])}",
      _fit_line(p["fit"], pd["total"], target)])


def report(p: dict) -> str:
  """A plain-text table of a plan: bytes per device and in total, kernels, FLOPs, fit and the estimate."""
  m, pd, f, tg = p["model"], p["per_device"], p["flops"], p["target"]
  what = (f"LoRA r={m['lora_rank']} on {len(m['lora_targets'])} projections" if m["mode"] == "lora"
          else "full fine-tuning")
  mesh = " ".join(f"{k}={v}" for k, v in p["mesh"].items())
  n = p["devices"]
  compiler = {"tpu": "libtpu (the TPU compiler)", "gpu": "XLA:GPU, deviceless", "cpu": "XLA:CPU"}[tg["platform"]]
  head = (f"the head on at most {p['loss_cap']} positions a row (the data's loss_cap)" if p["loss_cap"]
          else "the head on every position (no loss_cap given: an upper bound)")
  lines = [
      f"plan: {m['preset']} (vocab {m['vocab_size']}), {what}, batch {p['batch_size']} x {p['seq_len']} tokens"
      f" (grad_accum {p['grad_accum']}), remat {m['remat']}, weights {m['param_dtype']}"
      f"{', projections ' + m['quantize'] if m.get('quantize') else ''}, compute {m['dtype']}; {head}",
      f"target: {tg['name']}: {n} x {tg['device_kind']} on {tg['hosts']} host(s); compiled by {compiler}"
      f" in {p['compile_s']:.1f} s",
      f"mesh: {mesh}",
      *([f"model: {m['note']}"] if m.get("note") else []),
      f"parameters: base {p['base_params']:,}, trainable {p['trainable_params']:,}",
      f"attention kernel: {p['attention_kernel']}",
      "",
      f"{'':32}{'per device':>14}{'all devices':>14}{'unique':>14}",
  ]
  for label, key in [("base weights (frozen)", "base"), ("trainable weights", "trainable"),
                     ("optimizer state", "optimizer"), ("batch", "batch")]:
    uniq = _gb(p["unique_bytes"][key]) if key in p["unique_bytes"] else ""
    lines.append(f"{label:32}{_gb(pd[key]):>14}{_gb(pd[key] * n):>14}{uniq:>14}")
  times_n = lambda x: None if x is None else x * n  # noqa: E731
  lines.append(f"{'activations and temporaries':32}{_gb(pd['temp']):>14}{_gb(times_n(pd['temp'])):>14}")
  lines.append(f"{'compiled total':32}{_gb(pd['total']):>14}{_gb(times_n(pd['total'])):>14}")
  lines.append(f"  (compiled: arguments {_gb(pd['arguments'])} + outputs {_gb(pd['outputs'])} - donated "
               f"{_gb(pd['aliased'])} + temp {_gb(pd['temp'])} + code {_gb(pd['code'])})")
  lines.append(_fit_line(p["fit"], pd["total"], tg))
  lines += ["", f"FLOPs per step and device: {f['per_device']:.3e} (matmuls of the compiled HLO, loop trip counts "
                f"applied: {f['compiled_matmul_per_device']:.3e}"
                + (f"; attention inside the kernels, by formula: {f['kernel_attention_per_device']:.3e})"
                   if f["kernel_attention_per_device"] else ")"),
            f"  analytic, all devices: model {f['analytic_model']:.3e} + remat recompute {f['analytic_recompute']:.3e}"
            f" ({f['tokens']:,} tokens)"]
  est = p.get("estimate")
  if est:
    lines += [f"estimate (roofline from public peaks, {tg['peak_flops'] / 1e12:.0f} TFLOP/s bf16 and "
              f"{tg['hbm_bandwidth'] / 1e9:.0f} GB/s per device; no communication or kernel efficiency counted):",
              f"  step >= {est['step_s'] * 1e3:.0f} ms ({est['bound']}-bound), <= {est['tokens_per_s']:,.0f} tokens/s,"
              f" MFU <= {100 * est['mfu']:.0f}%"]
  if p["fit"]["fits"] is False:
    remat = "" if m["remat"] == "full" else " --config.model.remat=full,"  # advise only what is not set
    lines.append(f"  to fit: shard the weights (--config.mesh.fsdp),{remat} or fewer rows per step "
                 "(--config.train.grad_accum)")
  lines += ["", *(eval_report(e, tg) for e in p.get("eval", []))]
  return "\n".join(lines)

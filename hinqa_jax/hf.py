"""Hugging Face LLaMA checkpoints in and out, with safetensors directly (transformers 5 has no Flax).

Reading goes parameter by parameter, each read from disk slice by slice: with a sharding, a process
reads only the slices its devices hold, so host memory is about one process's shard plus one
parameter's slices in flight, never the whole model. Everything is validated (config, names, shapes)
before a byte of weights is read.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from hinqa_jax import distributed, files, lora, model as model_lib, quant
from hinqa_jax.tokenizer import load_tokenizer, stop_ids
from hinqa_jax.model import ModelConfig, Params

# Our path (stacked over layers when it starts with "layers") -> HF tensor name; HF Linear weights are [out, in],
# our kernels [in, out], hence `transpose`.
_LAYER_TENSORS = {
    ("input_layernorm", "weight"): ("input_layernorm.weight", False),
    ("post_attention_layernorm", "weight"): ("post_attention_layernorm.weight", False),
    **{("self_attn", p, "kernel"): (f"self_attn.{p}.weight", True) for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
    **{("mlp", p, "kernel"): (f"mlp.{p}.weight", True) for p in ("gate_proj", "up_proj", "down_proj")},
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "chat_template.jinja")
_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "bfloat16"}


# ----------------------------------------------------------------------------- config
def config_from_hf(hf: dict, *, source: str = "config.json", param_dtype: str | None = None) -> ModelConfig:
  """ModelConfig from a HF LLaMA config dict; reads `rope_scaling`/`rope_theta` and `rope_parameters` forms."""
  arch = hf.get("architectures") or []
  if hf.get("model_type") != "llama" or (arch and "LlamaForCausalLM" not in arch):
    raise ValueError(f"{source}: not a LLaMA causal LM (model_type={hf.get('model_type')!r}, architectures={arch})")
  for key, want in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
    if hf.get(key, want) != want:
      raise ValueError(f"{source}: {key}={hf.get(key)!r} is not supported (LLaMA uses {want!r})")
  rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type not in ("default", "llama3"):
    raise ValueError(f"{source}: rope type {rope_type!r} is not supported (default or llama3)")
  eos = hf.get("eos_token_id")
  eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())
  dtype = param_dtype or _DTYPES.get(str(hf.get("dtype", hf.get("torch_dtype", "float32"))), "float32")
  n_heads = hf["num_attention_heads"]
  try:
    return ModelConfig(
        vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, ffn_dim=hf["intermediate_size"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads, rms_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta, rope_factor=float(rope.get("factor", 0.0)) if rope_type == "llama3" else 0.0,
        rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
        rope_original_max_pos=int(rope.get("original_max_position_embeddings", 8192)),
        max_seq_len=int(hf.get("max_position_embeddings", 8192)), tie_embeddings=bool(hf.get("tie_word_embeddings")),
        bos_id=hf.get("bos_token_id") if hf.get("bos_token_id") is not None else -1, eos_ids=eos_ids,
        pad_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else -1,
        dtype=dtype, param_dtype=dtype)
  except KeyError as e:
    raise ValueError(f"{source}: missing key {e.args[0]!r}") from None


def with_tokens_of(cfg: ModelConfig, tokenizer) -> ModelConfig:
  """cfg with bos, pad and the stop ids of a tokenizer (tokenizer.stop_ids: eos and Llama-3's end-of-turn
  tokens), so plain `generate` on an export stops where the project's generation stops."""
  bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
  return cfg.replace(bos_id=-1 if bos is None else int(bos), eos_ids=tuple(stop_ids(tokenizer)),
                     pad_id=-1 if pad is None else int(pad))


def config_to_hf(cfg: ModelConfig, dtype: str) -> dict:
  """A config.json that transformers 4.x (vLLM's) and 5.x both read: legacy `rope_scaling` + `rope_theta`."""
  rope_scaling = None
  if cfg.rope_factor:
    rope_scaling = {"rope_type": "llama3", "factor": cfg.rope_factor, "low_freq_factor": cfg.rope_low_freq_factor,
                    "high_freq_factor": cfg.rope_high_freq_factor,
                    "original_max_position_embeddings": cfg.rope_original_max_pos}
  eos = list(cfg.eos_ids)
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.dim, "intermediate_size": cfg.ffn_dim, "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
      "hidden_act": "silu", "rms_norm_eps": cfg.rms_eps, "rope_theta": cfg.rope_theta, "rope_scaling": rope_scaling,
      "max_position_embeddings": cfg.max_seq_len, "tie_word_embeddings": cfg.tie_embeddings,
      "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
      "bos_token_id": cfg.bos_id if cfg.bos_id >= 0 else None, "eos_token_id": eos[0] if len(eos) == 1 else eos,
      "pad_token_id": cfg.pad_id if 0 <= cfg.pad_id < cfg.vocab_size else None,
      "torch_dtype": dtype, "use_cache": True,
  }


# ----------------------------------------------------------------------------- reading
def _expected_tensors(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple, int | None, bool]]:
  """HF name -> (HF shape, our path, layer index or None, transpose); a quantized kernel's path ends in
  "kernel" too (its stored leaves are quant.py's)."""
  shapes = jax.eval_shape(model_lib.init, cfg.replace(quantize=""), jax.random.key(0))
  out = {"model.embed_tokens.weight": ((cfg.vocab_size, cfg.dim), ("embed_tokens", "embedding"), None, False),
         "model.norm.weight": ((cfg.dim,), ("norm", "weight"), None, False)}
  if not cfg.tie_embeddings:
    out["lm_head.weight"] = ((cfg.vocab_size, cfg.dim), ("lm_head", "kernel"), None, True)
  for path, (suffix, transpose) in _LAYER_TENSORS.items():
    leaf = shapes["layers"]
    for p in path:
      leaf = leaf[p]
    shape = leaf.shape[1:][::-1] if transpose else leaf.shape[1:]
    for i in range(cfg.n_layers):
      out[f"model.layers.{i}.{suffix}"] = (tuple(shape), ("layers",) + path, i, transpose)
  return out


def _read_json(path: Path) -> dict:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f"{path}: not valid JSON ({err})") from None


@contextlib.contextmanager
def _open_safetensors(f: Path):
  """safe_open, with a damaged file (truncated, bad header) named in the error."""
  try:
    with safe_open(f, "numpy") as st:
      yield st
  except SafetensorError as err:
    raise ValueError(f"{f}: unreadable safetensors file ({err}); is it complete?") from None


def _weight_files(path: Path) -> dict[str, Path]:
  """Tensor name -> safetensors file, from the index when sharded."""
  index = path / "model.safetensors.index.json"
  if index.exists():
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index}: no weight_map")
    return {name: path / f for name, f in weight_map.items()}
  files = sorted(path.glob("*.safetensors"))
  if not files:
    raise ValueError(f"{path}: no *.safetensors weights (and no model.safetensors.index.json)")
  names = {}
  for f in files:
    with _open_safetensors(f) as st:
      names.update({k: f for k in st.keys()})
  return names


def read_config(path: str | os.PathLike, param_dtype: str | None = None) -> ModelConfig:
  cfg_file = Path(path) / "config.json"
  if not cfg_file.exists():
    raise ValueError(f"{path}: no config.json (is this a Hugging Face model directory?)")
  return config_from_hf(_read_json(cfg_file), source=str(cfg_file), param_dtype=param_dtype)


def _checked_files(path: Path, expected: dict) -> dict[str, Path]:
  """Tensor name -> its safetensors file, every expected tensor checked there with config.json's shape first."""
  files = _weight_files(path)
  missing = [n for n in expected if n not in files]
  if missing:
    raise ValueError(f"{path}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)} in all)")
  by_file: dict[Path, list[str]] = {}
  for name in expected:
    by_file.setdefault(files[name], []).append(name)
  for f, names in by_file.items():
    if not f.exists():
      raise ValueError(f"{f}: listed in model.safetensors.index.json but missing")
    with _open_safetensors(f) as st:
      for name in names:
        shape = tuple(st.get_slice(name).get_shape())
        if shape != expected[name][0]:
          raise ValueError(f"{f}: tensor {name} has shape {shape}, expected {expected[name][0]} from config.json")
  return files


def _param_groups(cfg: ModelConfig, expected: dict) -> dict[tuple, tuple[tuple[int, ...], list[str], bool]]:
  """Our path -> (our shape, HF name per layer (or the one name), transpose)."""
  groups: dict[tuple, tuple[tuple[int, ...], list[str], bool]] = {}
  for name, (hf_shape, p, layer, transpose) in expected.items():
    inner = hf_shape[::-1] if transpose else hf_shape
    shape = inner if layer is None else (cfg.n_layers,) + inner
    groups.setdefault(p, (shape, [], transpose))[1].append(name)
  return groups


class _Reader:
  """Index slices of our parameters, read from the HF tensors on disk one tensor (one layer) at a time."""

  def __init__(self, cfg: ModelConfig, files: dict[str, Path], expected: dict):
    self.cfg, self.files, self.expected, self.dtype = cfg, files, expected, jnp.dtype(cfg.param_dtype)

  def read(self, name: str, index: tuple[slice, ...], transpose: bool, dtype=None) -> np.ndarray:
    """index (over our axes) of one HF tensor, read from disk alone and cast (default: the param dtype). The
    file is memory-mapped for this one read: the pages a read touches (all of the tensor's when the slice is
    across its rows) count in the process's resident memory until they are unmapped."""
    with _open_safetensors(self.files[name]) as st:
      block = st.get_slice(name)[index[::-1] if transpose else index]
    return (block.T if transpose else block).astype(self.dtype if dtype is None else dtype, copy=False)

  def part(self, index: tuple[slice, ...], shape, names, transpose, layer_fn=None) -> np.ndarray:
    """index of one parameter; layer_fn(HF tensor name, row slice, col slice) reads and makes one layer's block."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    if self.expected[names[0]][2] is None:  # one tensor, not stacked over layers
      return np.ascontiguousarray(self.read(names[0], index, transpose))
    layers = range(*index[0].indices(shape[0]))
    out = None
    for j, layer in enumerate(layers):  # one layer's slice in flight at a time
      block = layer_fn(names[layer], *index[1:]) if layer_fn else self.read(names[layer], index[1:], transpose)
      if out is None:
        out = np.empty((len(layers),) + block.shape, block.dtype)
      out[j] = block
    return out

  def leaves(self, p: tuple, shape, names: list[str], transpose: bool) -> dict[str, tuple[tuple[int, ...], Callable]]:
    """Leaf name -> (its shape, index -> that slice) of the parameter at p: the parameter itself, or for a
    quantized base's layer kernel quant.py's stored leaves, quantized from float32 reads as they stream in."""
    cfg = self.cfg
    if not (cfg.quantize and p[0] == "layers" and p[-1] == "kernel"):
      return {p[-1]: (shape, functools.partial(self.part, shape=shape, names=names, transpose=transpose))}
    out, shared = {}, {}  # shared: the kernel's quantized blocks, read once for both its leaves (quant.stored_rows)
    for leaf, (stored, _) in quant.stored_shapes(shape[1], shape[2], cfg.quantize, cfg.quantize_block).items():
      def layer_fn(name, rows, cols, leaf=leaf):
        read_rows = lambda lo, hi: self.read(name, (slice(lo, hi), cols), transpose, np.float32)  # noqa: E731
        return quant.stored_rows(read_rows, leaf, rows, shape[1], cfg.quantize, cfg.quantize_block, shared,
                                 (name, cols.start, cols.stop))
      leaf_shape = (shape[0],) + stored
      out[leaf] = (leaf_shape, functools.partial(self.part, shape=leaf_shape, names=names, transpose=transpose,
                                                 layer_fn=layer_fn))
    return out


def _placed(shape: tuple[int, ...], fn, where: jax.sharding.Sharding | None) -> jax.Array:
  """The array fn(index) gives slices of: whole on the default device without a sharding, else each device's
  slice read by this process alone (devices holding the same slice, replicas, share one read)."""
  if where is None:
    return jnp.asarray(fn(()))
  cache: dict[tuple, np.ndarray] = {}

  def cached(index):
    key = tuple((s.start, s.stop, s.step) for s in index)
    if key not in cache:
      cache[key] = fn(index)
    return cache[key]
  return jax.make_array_from_callback(shape, where, cached)


def load_hf(path: str | os.PathLike, *, param_dtype: str | None = None,
            sharding_of: Callable[[tuple, tuple[int, ...]], jax.sharding.Sharding] | None = None,
            quantize: str = "", quantize_block: int = 64) -> tuple[ModelConfig, Params]:
  """(ModelConfig, base params) from a local HF LLaMA directory.

  param_dtype: storage dtype (default: the checkpoint's; float16 becomes bfloat16).
  quantize, quantize_block: store the projection kernels as quant.py's int8 or NF4 leaves, quantized from the
    checkpoint's values (read as float32) layer by layer while they stream in: a process holds one layer's
    float slice at a time, never a float copy of the base.
  sharding_of(path, shape): the Sharding of each parameter. With it, each process reads from disk only the
    slices its own devices hold (`safe_open(...).get_slice`), so an 8B import on N processes holds about
    1/N of the model per host. Without it: each whole parameter on the default device.
  """
  path = Path(path)
  cfg = read_config(path, param_dtype)
  if quantize:
    try:
      cfg = cfg.replace(quantize=quantize, quantize_block=quantize_block)
    except ValueError as err:
      raise ValueError(f"{path / 'config.json'}: {err}") from None
  expected = _expected_tensors(cfg)
  reader = _Reader(cfg, _checked_files(path, expected), expected)
  params: dict = {}
  for p, (shape, names, transpose) in _param_groups(cfg, expected).items():
    node = params
    for k in p[:-1]:
      node = node.setdefault(k, {})
    for leaf, (leaf_shape, fn) in reader.leaves(p, shape, names, transpose).items():
      node[leaf] = _placed(leaf_shape, fn, None if sharding_of is None else sharding_of(p[:-1] + (leaf,), leaf_shape))
  return cfg, params


# ----------------------------------------------------------------------------- writing
def _hf_tensor(params: Params, spec: tuple, adapters, lcfg, dtype) -> np.ndarray:
  """One HF tensor on the host: gathered from however it is sharded, LoRA merged in float32, then cast.
  A quantized kernel is dequantized to float32 first: the merge adds the update to the base it was trained on."""
  _, p, layer, transpose = spec
  node = params
  for k in p[:-1]:
    node = node[k]
  if p[-1] in node:
    leaf = node[p[-1]]
    w = distributed.to_host(leaf if layer is None else leaf[layer])
  else:
    w = quant.dequantize({k: distributed.to_host(v[layer]) for k, v in node.items()}, np.float32)
  ad = adapters["layers"].get(p[1], {}).get(p[2]) if adapters is not None and p[0] == "layers" else None
  if ad is not None:
    w = lora.merged_kernel(w, ad["a"][layer], ad["b"][layer], lcfg)
  w = w.astype(dtype)
  return np.ascontiguousarray(w.T if transpose else w)


def _plan_shards(nbytes: dict[str, int], max_shard_bytes: int) -> list[list[str]]:
  """Tensor names in file order, cut into shards of at most max_shard_bytes (one tensor may exceed it alone)."""
  shards: list[list[str]] = [[]]
  size = 0
  for name, n in nbytes.items():
    if shards[-1] and size + n > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += n
  return shards


def save_hf(out_dir: str | os.PathLike, cfg: ModelConfig, params: Params, *, adapters=None, lora_cfg=None,
            dtype: str | None = None, tokenizer_dir: str | os.PathLike | None = None,
            max_shard_bytes: int = 2 * 1024**3) -> Path:
  """Write a transformers-loadable directory: config.json, generation_config.json, sharded safetensors.

  Call it from every process, with params and adapters sharded however they are. Tensor by tensor,
  each is gathered to the host, merged with its LoRA update in float32 (W + scale * A @ B), cast to
  `dtype` (default cfg.param_dtype; a bfloat16 export rounds the merged sum) and written by process 0
  alone, one safetensors shard at a time: no process holds more than one shard, no device more than
  one tensor. The directory appears whole or not at all (written beside it, then renamed); every
  process returns once it is there.
  """
  out_dir = Path(out_dir)
  if tokenizer_dir is not None and any((Path(tokenizer_dir) / f).exists() for f in ("tokenizer.json",
                                                                                    "tokenizer_config.json")):
    cfg = with_tokens_of(cfg, load_tokenizer(tokenizer_dir))  # the shipped tokenizer's ids, not the preset's
  np_dtype = jnp.dtype(dtype or cfg.param_dtype)
  expected = _expected_tensors(cfg)
  host_adapters = None if adapters is None else jax.tree.map(distributed.to_host, adapters)
  nbytes = {name: int(np.prod(spec[0])) * np_dtype.itemsize for name, spec in expected.items()}
  shards = _plan_shards(nbytes, max_shard_bytes)
  main = distributed.is_main()
  with files.atomic_dir(out_dir) if main else contextlib.nullcontext() as tmp:  # process 0 writes
    weight_map = {}
    for i, names in enumerate(shards):
      fname = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      shard = {}
      for name in names:  # every process takes part in each gather; process 0 keeps the tensors
        tensor = _hf_tensor(params, expected[name], host_adapters, lora_cfg, np_dtype)
        if main:
          shard[name] = tensor
      if main:
        save_file(shard, str(tmp / fname), metadata={"format": "pt"})
      weight_map.update({name: fname for name in names})
    if main:
      if len(shards) > 1:
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}, indent=2))
      (tmp / "config.json").write_text(json.dumps(config_to_hf(cfg, str(np_dtype)), indent=2))
      gen = {"bos_token_id": cfg.bos_id if cfg.bos_id >= 0 else None,
             "eos_token_id": list(cfg.eos_ids) if len(cfg.eos_ids) != 1 else cfg.eos_ids[0],
             "pad_token_id": cfg.pad_id if 0 <= cfg.pad_id < cfg.vocab_size else None, "do_sample": False}
      (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
      if tokenizer_dir is not None:
        for f in _TOKENIZER_FILES:
          if (Path(tokenizer_dir) / f).exists():
            shutil.copy2(Path(tokenizer_dir) / f, tmp / f)
  distributed.barrier(f"save_hf {out_dir}")
  return out_dir


# ----------------------------------------------------------------------------- PEFT adapters
def save_peft(out_dir: str | os.PathLike, cfg: ModelConfig, adapters: Params, lcfg,
              base_model_name_or_path: str | None = None) -> Path:
  """adapter_config.json + adapter_model.safetensors that `peft.PeftModel.from_pretrained` loads.

  Call it from every process; process 0 writes, the others return once the directory is there."""
  out_dir = Path(out_dir)
  config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lcfg.rank, "lora_alpha": lcfg.alpha,
      "target_modules": sorted(lcfg.targets), "lora_dropout": lcfg.dropout, "use_rslora": lcfg.rslora,
      "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
      "modules_to_save": None, "layers_to_transform": None, "base_model_name_or_path": base_model_name_or_path,
  }
  tensors = {}
  for group, projs in adapters["layers"].items():
    for name, ad in projs.items():  # gathered on every process, whatever the sharding
      a = distributed.to_host(ad["a"]).astype(np.float32)  # [L, D_in, R]
      b = distributed.to_host(ad["b"]).astype(np.float32)  # [L, R, D_out]
      for i in range(cfg.n_layers):
        prefix = f"base_model.model.model.layers.{i}.{group}.{name}"
        tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(a[i].T)  # PEFT: A [R, D_in], B [D_out, R]
        tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
  if distributed.is_main():
    with files.atomic_dir(out_dir) as tmp:
      save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
      (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2))
  distributed.barrier(f"save_peft {out_dir}")
  return out_dir

"""HF checkpoints in and out: round trips through transformers, both config forms, clear errors on bad input."""
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM

from helpers import hf_logits, tiny_hf_model
from hinqa_jax import hf, model, tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tie", [False, True])
def test_round_trip_through_transformers(tmp_path, tie):
  src, out = tmp_path / "src", tmp_path / "out"
  m = tiny_hf_model(src, kv_heads=2, tie=tie, vocab=4096)  # the bundled tokenizer's vocabulary
  for f in ("tokenizer.json", "tokenizer_config.json"):  # a real tokenizer, shipped with the export
    shutil.copy(REPO / "data" / "tokenizer" / f, src / f)
  cfg, params = hf.load_hf(src)
  hf.save_hf(out, cfg, params, tokenizer_dir=src, max_shard_bytes=40_000)  # force several shards + index
  assert (out / "model.safetensors.index.json").exists() and (out / "tokenizer.json").exists()
  reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  ref_sd, new_sd = m.state_dict(), reloaded.state_dict()
  assert set(ref_sd) == set(new_sd)
  for k in ref_sd:
    assert torch.equal(ref_sd[k], new_sd[k]), k
  tokens = np.random.RandomState(0).randint(0, 256, (2, 40))
  np.testing.assert_array_equal(hf_logits(reloaded, tokens), hf_logits(m, tokens))
  # ...and our reload of our own export is identical too.
  cfg2, params2 = hf.load_hf(out)
  tok = tokenizer.load_tokenizer(src)  # the export's special tokens are its tokenizer's, all else the same
  assert cfg2 == hf.with_tokens_of(cfg, tok) and cfg2.eos_ids == tuple(tokenizer.stop_ids(tok)) != cfg.eos_ids
  jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_reads_legacy_rope_scaling_config(tmp_path):
  m = tiny_hf_model(tmp_path, kv_heads=2)
  cfg_new, _ = hf.load_hf(tmp_path)
  c = json.loads((tmp_path / "config.json").read_text())
  rope = c.pop("rope_parameters")
  c["rope_theta"] = rope.pop("rope_theta")
  c["rope_scaling"] = rope
  (tmp_path / "config.json").write_text(json.dumps(c))
  cfg_old, params = hf.load_hf(tmp_path)
  assert cfg_old == cfg_new and cfg_old.rope_factor == 8.0 and cfg_old.rope_original_max_pos == 16
  tokens = np.random.RandomState(0).randint(0, 256, (1, 50))
  np.testing.assert_allclose(np.asarray(model.forward(cfg_old, params, jnp.asarray(tokens, jnp.int32))),
                             hf_logits(m, tokens), atol=1e-4, rtol=0)


def test_bf16_export_loads_in_transformers(tmp_path):
  tiny_hf_model(tmp_path / "src", kv_heads=1)
  cfg, params = hf.load_hf(tmp_path / "src")
  hf.save_hf(tmp_path / "out", cfg, params, dtype="bfloat16")
  reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
  assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16
  cfg16, params16 = hf.load_hf(tmp_path / "out")
  assert cfg16.param_dtype == "bfloat16"
  np.testing.assert_array_equal(np.asarray(params16["norm"]["weight"]),
                                np.asarray(params["norm"]["weight"].astype(jnp.bfloat16)))


def test_bad_directories_name_the_file_and_tensor(tmp_path):
  with pytest.raises(ValueError, match="no config.json"):
    hf.load_hf(tmp_path)
  tiny_hf_model(tmp_path / "m", kv_heads=2)
  d = tmp_path / "m"
  weights = d / "model.safetensors"
  tensors = load_file(weights)

  tensors_bad = dict(tensors)
  del tensors_bad["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors_bad, weights)
  with pytest.raises(ValueError, match=r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]"):
    hf.load_hf(d)

  tensors_bad = dict(tensors)
  tensors_bad["model.layers.0.self_attn.k_proj.weight"] = np.zeros((3, 64), np.float32)
  save_file(tensors_bad, weights)
  with pytest.raises(ValueError, match=r"model.safetensors: tensor model.layers.0.self_attn.k_proj.weight has shape \(3, 64\), expected \(32, 64\)"):
    hf.load_hf(d)

  save_file(tensors, weights)  # a copy cut short, as an interrupted download leaves it
  data = weights.read_bytes()
  weights.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"model.safetensors: unreadable safetensors file .*is it complete\?"):
    hf.load_hf(d)

  weights.unlink()
  with pytest.raises(ValueError, match="no \\*.safetensors weights"):
    hf.load_hf(d)

  good = (d / "config.json").read_text()
  (d / "config.json").write_text(good[: len(good) // 2])
  with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
    hf.read_config(d)
  (d / "config.json").write_text(good)

  c = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps({**c, "model_type": "mistral", "architectures": ["MistralForCausalLM"]}))
  with pytest.raises(ValueError, match="config.json: not a LLaMA causal LM .*mistral"):
    hf.load_hf(d)


@pytest.mark.parametrize("mesh_shape,dtype", [((1, 2, 4), None), ((1, 8, 1), "bfloat16")])
def test_sharded_import_equals_whole_import(tmp_path, mesh_shape, dtype):
  """With a sharding callback each device gets exactly its slice of the whole import (values and layout)."""
  from jax.sharding import NamedSharding

  from hinqa_jax import sharding
  tiny_hf_model(tmp_path, kv_heads=2)
  hf.save_hf(tmp_path / "split", *hf.load_hf(tmp_path), max_shard_bytes=40_000)  # tensors over several files
  mesh = sharding.make_mesh(dict(zip(sharding.AXES, mesh_shape)))
  shard_of = lambda path, shape: NamedSharding(mesh, sharding.param_spec(path, shape, mesh))  # noqa: E731
  _, whole = hf.load_hf(tmp_path, param_dtype=dtype)
  _, sharded = hf.load_hf(tmp_path / "split", param_dtype=dtype, sharding_of=shard_of)
  q = sharded["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == sharding.param_spec(("layers", "self_attn", "q_proj", "kernel"), q.shape, mesh)
  assert len(q.sharding.spec) and any(q.sharding.spec)  # really split, not replicated
  for w, s in zip(jax.tree.leaves(whole), jax.tree.leaves(sharded)):
    assert s.dtype == w.dtype
    for shard in s.addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(w)[shard.index])

"""LoRA: unchanged at init, equal to PEFT with our exported adapter, merged export equal too."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from helpers import hf_logits, tiny_hf_model
from hinqa_jax import hf, lora, model


def _random_adapters(cfg, lcfg, seed=1):
  """Adapters with non-zero B, as after training."""
  ad = lora.init(cfg, lcfg, jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 100), 64))
  return jax.tree_util.tree_map_with_path(
      lambda p, x: x if p[-1].key == "a" else 0.1 * jax.random.normal(next(keys), x.shape), ad)


def test_init_is_identity_and_b_is_zero(tmp_path):
  tiny_hf_model(tmp_path, kv_heads=2)
  cfg, params = hf.load_hf(tmp_path)
  lcfg = lora.LoraConfig(rank=4, alpha=8)
  ad = lora.init(cfg, lcfg, jax.random.key(0))
  assert all(float(jnp.abs(x["b"]).max()) == 0 and float(jnp.abs(x["a"]).max()) > 0
             for g in ad["layers"].values() for x in g.values())
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 16)), jnp.int32)
  np.testing.assert_array_equal(np.asarray(model.forward(cfg, params, tokens, adapters=ad, lora_cfg=lcfg)),
                                np.asarray(model.forward(cfg, params, tokens)))


@pytest.mark.parametrize("rslora,targets", [(False, lora.ALL_TARGETS), (True, ("q_proj", "v_proj", "down_proj"))])
def test_peft_loads_our_adapter_and_gives_our_logits(tmp_path, rslora, targets):
  base = tiny_hf_model(tmp_path / "base", kv_heads=2)
  cfg, params = hf.load_hf(tmp_path / "base")
  lcfg = lora.LoraConfig(rank=4, alpha=16, targets=targets, rslora=rslora)
  ad = _random_adapters(cfg, lcfg)
  tokens = np.random.RandomState(0).randint(0, 256, (2, 30))
  ours = np.asarray(model.forward(cfg, params, jnp.asarray(tokens, jnp.int32), adapters=ad, lora_cfg=lcfg))
  base_logits = hf_logits(base, tokens)
  assert np.abs(ours - base_logits).max() > 1e-2  # the adapter does something

  hf.save_peft(tmp_path / "adapter", cfg, ad, lcfg)
  peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32),
                                         tmp_path / "adapter").eval()
  np.testing.assert_allclose(hf_logits(peft_model, tokens), ours, atol=1e-4, rtol=0)

  hf.save_hf(tmp_path / "merged", cfg, params, adapters=ad, lora_cfg=lcfg)
  merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
  np.testing.assert_allclose(hf_logits(merged, tokens), ours, atol=1e-4, rtol=0)


def test_bad_lora_configs():
  with pytest.raises(ValueError, match=r"unknown LoRA targets \['qkv'\]"):
    lora.LoraConfig(targets=("q_proj", "qkv"))
  with pytest.raises(ValueError, match="rank must be >= 1"):
    lora.LoraConfig(rank=0)


def test_trainable_count_of_llama3_8b_rank16_all_projections():
  cfg = model.ModelConfig.preset("llama3_8b")
  shapes = jax.eval_shape(lambda k: lora.init(cfg, lora.LoraConfig(rank=16), k), jax.random.key(0))
  assert lora.count(shapes) == 41_943_040


def test_merged_export_adds_the_update_in_float32_then_casts_once(tmp_path):
  """A bfloat16 base and adapters whose update is exact in float32 (small dyadic values): the float32
  export is PEFT's merge_and_unload bit for bit, and the default (the base's bfloat16) export is that
  same float32 sum rounded once, never an update rounded to bfloat16 before it is added."""
  from safetensors.torch import load_file
  tiny_hf_model(tmp_path / "src", kv_heads=2)
  cfg, params = hf.load_hf(tmp_path / "src", param_dtype="bfloat16")
  hf.save_hf(tmp_path / "base", cfg, params, dtype="float32")  # the bf16 weights, stored exactly in float32
  lcfg = lora.LoraConfig(rank=4, alpha=16.0)  # scale 4
  rng = np.random.RandomState(0)
  ad = jax.tree_util.tree_map_with_path(  # A in 1/64 steps, B in 1/1024 steps: A @ B * 4 is exact in float32
      lambda p, x: jnp.asarray(rng.randint(-4, 5, x.shape) / 64 if p[-1].key == "a" else
                               rng.randint(-8, 9, x.shape) / 1024, jnp.float32), lora.init(cfg, lcfg, jax.random.key(0)))
  hf.save_peft(tmp_path / "peft", cfg, ad, lcfg)
  hf.save_hf(tmp_path / "m32", cfg, params, adapters=ad, lora_cfg=lcfg, dtype="float32")
  hf.save_hf(tmp_path / "m16", cfg, params, adapters=ad, lora_cfg=lcfg)
  peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32),
                                         tmp_path / "peft")
  ref = {k: v.detach() for k, v in peft_model.merge_and_unload().state_dict().items()}
  base = load_file(tmp_path / "base" / "model.safetensors")
  m32, m16 = load_file(tmp_path / "m32" / "model.safetensors"), load_file(tmp_path / "m16" / "model.safetensors")
  assert set(ref) == set(m32) == set(m16)
  for name, w in ref.items():
    assert m32[name].dtype == torch.float32 and torch.equal(m32[name], w), name
    assert m16[name].dtype == torch.bfloat16 and torch.equal(m16[name], w.to(torch.bfloat16)), name
  merged = [n for n in ref if any(t in n for t in lcfg.targets)]
  assert len(merged) == 7 * cfg.n_layers and all(not torch.equal(m32[n], base[n]) for n in merged)

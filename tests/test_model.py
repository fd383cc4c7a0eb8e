"""The Flax LLaMA against transformers' LlamaForCausalLM on tiny random configs (float32, highest precision)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import hf_logits, tiny_hf_model
from hinqa_jax import attention, hf, model
from hinqa_jax.matmul import matmul

# Meta-Llama-3.1-8B/config.json, verbatim.
META_LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256}


@pytest.mark.parametrize("kv_heads,scaling,tie", [(1, True, False), (2, True, True), (4, True, False),
                                                  (1, False, True), (2, False, False), (4, False, True)])
def test_logits_match_transformers(tmp_path, kv_heads, scaling, tie):
  m = tiny_hf_model(tmp_path, kv_heads=kv_heads, llama3_scaling=scaling, tie=tie)
  cfg, params = hf.load_hf(tmp_path)
  assert cfg.n_kv_heads == kv_heads and cfg.tie_embeddings == tie and bool(cfg.rope_factor) == scaling
  # 80 tokens: well past the scaling's original max positions (16), into every RoPE band.
  tokens = np.random.RandomState(kv_heads).randint(0, 256, (2, 80))
  ours = np.asarray(model.forward(cfg, params, jnp.asarray(tokens, jnp.int32)))
  np.testing.assert_allclose(ours, hf_logits(m, tokens), atol=1e-4, rtol=0)


def test_padded_batch_matches_transformers(tmp_path):
  m = tiny_hf_model(tmp_path, kv_heads=2)
  cfg, params = hf.load_hf(tmp_path)
  rs = np.random.RandomState(0)
  tokens = rs.randint(0, 256, (3, 24))
  mask = np.ones_like(tokens)
  mask[1, 15:] = 0  # right padding; pad positions hold ordinary ids, only the mask says they are padding
  mask[2, 7:] = 0
  ours = np.asarray(model.forward(cfg, params, jnp.asarray(tokens, jnp.int32), segment_ids=jnp.asarray(mask)))
  ref = hf_logits(m, tokens, attention_mask=mask)
  np.testing.assert_allclose(ours[mask == 1], ref[mask == 1], atol=1e-4, rtol=0)
  # Each padded row equals that row alone, unpadded.
  alone = np.asarray(model.forward(cfg, params, jnp.asarray(tokens[2:3, :7], jnp.int32)))
  np.testing.assert_allclose(ours[2, :7], alone[0], atol=1e-5, rtol=0)


def test_packed_segments_do_not_attend_across(tmp_path):
  tiny_hf_model(tmp_path, kv_heads=2)
  cfg, params = hf.load_hf(tmp_path)
  rs = np.random.RandomState(3)
  a, b = rs.randint(0, 256, 9), rs.randint(0, 256, 13)
  packed = np.concatenate([a, b, [5, 5]])[None]
  segments = np.array([[1] * 9 + [2] * 13 + [0, 0]])
  positions = np.array([list(range(9)) + list(range(13)) + [0, 0]])
  out = np.asarray(model.forward(cfg, params, jnp.asarray(packed, jnp.int32), segment_ids=jnp.asarray(segments),
                                 positions=jnp.asarray(positions)))
  alone_a = np.asarray(model.forward(cfg, params, jnp.asarray(a[None], jnp.int32)))
  alone_b = np.asarray(model.forward(cfg, params, jnp.asarray(b[None], jnp.int32)))
  np.testing.assert_allclose(out[0, :9], alone_a[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(out[0, 9:22], alone_b[0], atol=1e-5, rtol=0)


def test_llama3_8b_preset_is_meta_config_and_parameter_count():
  cfg = model.ModelConfig.preset("llama3_8b")
  from_meta = hf.config_from_hf(META_LLAMA31_8B)
  assert from_meta == cfg.replace(eos_ids=(128001,), pad_id=-1, dtype="bfloat16", param_dtype="bfloat16")
  shapes = jax.eval_shape(model.init, cfg, jax.random.key(0))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))
  assert model.count_params(shapes) == 8_030_261_248
  assert model.count_params(jax.eval_shape(model.init, model.ModelConfig.preset("llama3_70b"),
                                           jax.random.key(0))) == 70_553_706_496


def test_bf16_forward_is_close_to_fp32(tmp_path):
  tiny_hf_model(tmp_path, kv_heads=2)
  cfg32, params = hf.load_hf(tmp_path)
  cfg16, params16 = hf.load_hf(tmp_path, param_dtype="bfloat16")
  assert params16["layers"]["mlp"]["up_proj"]["kernel"].dtype == jnp.bfloat16
  tokens = jnp.asarray(np.random.RandomState(0).randint(0, 256, (1, 32)), jnp.int32)
  l32 = np.asarray(model.forward(cfg32, params, tokens))
  l16 = model.forward(cfg16, params16, tokens)
  assert l16.dtype == jnp.float32  # logits leave the model in float32 whatever the compute dtype
  assert np.abs(np.asarray(l16) - l32).max() < 0.1 * np.abs(l32).max()
  assert (np.asarray(l16).argmax(-1) == l32.argmax(-1)).mean() > 0.8


def test_unknown_preset_and_bad_config():
  with pytest.raises(ValueError, match="unknown model preset 'nope'"):
    model.ModelConfig.preset("nope")
  with pytest.raises(ValueError, match="not a multiple"):
    model.ModelConfig(vocab_size=8, dim=8, n_layers=1, n_heads=3, n_kv_heads=2, ffn_dim=8)


def test_blocked_causal_attention_matches_transformers(tmp_path):
  """256 tokens: the causal attention runs in query blocks (attention.ATTN_BLOCK), with packing and padding."""
  assert 256 % attention.ATTN_BLOCK == 0 and 256 // attention.ATTN_BLOCK >= 2
  m = tiny_hf_model(tmp_path, kv_heads=2)
  cfg, params = hf.load_hf(tmp_path)
  rs = np.random.RandomState(5)
  tokens = rs.randint(0, 256, (2, 256))
  mask = np.ones_like(tokens)
  mask[1, 200:] = 0
  ours = np.asarray(model.forward(cfg, params, jnp.asarray(tokens, jnp.int32), segment_ids=jnp.asarray(mask)))
  np.testing.assert_allclose(ours[mask == 1], hf_logits(m, tokens, attention_mask=mask)[mask == 1], atol=1e-4,
                             rtol=0)
  # Two packed segments straddling the block boundary each equal their own forward.
  seg = np.array([[1] * 150 + [2] * 106])
  pos = np.array([list(range(150)) + list(range(106))])
  packed = np.asarray(model.forward(cfg, params, jnp.asarray(tokens[:1], jnp.int32), segment_ids=jnp.asarray(seg),
                                    positions=jnp.asarray(pos)))[0]
  second = np.asarray(model.forward(cfg, params, jnp.asarray(tokens[:1, 150:], jnp.int32)))[0]
  np.testing.assert_allclose(packed[150:], second, atol=1e-5, rtol=0)


def test_bf16_matmul_rounds_once_forward_and_backward():
  """matmul.matmul at bf16: forward, dx and dw are the float32 products rounded once to bf16 (as GPU/TPU
  matmuls accumulate), and a frozen kernel (not differentiated) gets no [I,O] gradient dot at all."""
  ks = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(ks[0], (4, 64, 96)).astype(jnp.bfloat16)
  w = (jax.random.normal(ks[1], (96, 80)) / 10).astype(jnp.bfloat16)
  g = jax.random.normal(ks[2], (4, 64, 80)).astype(jnp.bfloat16)
  y, vjp = jax.vjp(matmul, x, w)
  dx, dw = vjp(g)
  f32, hp = (lambda a: np.asarray(a.astype(jnp.float32))), jax.lax.Precision.HIGHEST
  specs = [("bti,io->bto", x, w, 96), ("bto,io->bti", g, w, 80), ("bti,bto->io", x, g, 4 * 64)]
  for got, (spec, a, b, n) in zip((y, dx, dw), specs):
    assert got.dtype == jnp.bfloat16
    ref = np.asarray(jnp.einsum(spec, f32(a), f32(b), precision=hp))
    # One rounding to bf16 (unit roundoff 2^-8) of a float32 sum whose order is the kernel's: the sum may
    # differ from ours by n * 2^-24 * sum|terms| (the float32 summation bound), which near cancellation
    # is more than a bf16 ulp of the result.
    slack = n * 2.0**-24 * np.asarray(jnp.einsum(spec, np.abs(f32(a)), np.abs(f32(b)), precision=hp))
    assert np.all(np.abs(f32(got) - ref) <= 2.0**-8 * (np.abs(ref) + slack) + slack)
    assert np.mean(f32(got) != f32(jnp.asarray(ref).astype(jnp.bfloat16))) < 1e-3  # almost always the same bits
    # A float32 result (no rounding) or one rounded twice would break the bound or the equality rate.
  frozen = jax.make_jaxpr(jax.grad(lambda a: jnp.sum(matmul(a, w).astype(jnp.float32))))(x)
  assert str(frozen).count("dot_general") == 2  # forward and dx only

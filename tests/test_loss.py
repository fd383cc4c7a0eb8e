"""The chunked cross entropy (loss.py) against the full-logits path: same loss and gradients, float32."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hinqa_jax import lora, loss, model, train


def _full_logits_loss(cfg, params, x_btd, tokens_bt, w_bt):
  """Today's reference: [B,T,V] float32 logits, optax's cross entropy, autodiff through both."""
  logits = model.logits_from_hidden(cfg, params, x_btd)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens_bt[:, 1:])
  return jnp.sum(nll * w_bt)


# One chunk; chunks of 8 over a tail padded to 40; chunks of 12 (37 positions: 4 chunks, padded tail).
@pytest.mark.parametrize("tie,chunk", [(False, None), (True, 8), (False, 12)])
def test_loss_and_gradients_equal_the_full_logits_path(tie, chunk):
  cfg = model.ModelConfig.preset("tiny", vocab_size=300, tie_embeddings=tie)
  params = model.init(cfg, jax.random.key(0))
  b, t = 3, 37
  tokens = jax.random.randint(jax.random.key(1), (b, t), 0, cfg.vocab_size)
  w = (jax.random.uniform(jax.random.key(2), (b, t - 1)) > 0.4).astype(jnp.float32)
  x = jax.random.normal(jax.random.key(3), (b, t, cfg.dim))
  ours = lambda x_, p: loss.next_token_nll(cfg, p, x_, tokens, w, chunk=chunk)  # noqa: E731
  ref = lambda x_, p: _full_logits_loss(cfg, p, x_, tokens, w)  # noqa: E731
  np.testing.assert_allclose(jax.jit(ours)(x, params), jax.jit(ref)(x, params), rtol=1e-5)
  # Gradients to the hidden states and to every parameter (the head included: full fine-tuning).
  g_ours = jax.jit(jax.grad(ours, argnums=(0, 1)))(x, params)
  g_ref = jax.jit(jax.grad(ref, argnums=(0, 1)))(x, params)
  jax.tree.map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5), g_ours, g_ref)
  head = g_ref[1]["embed_tokens"]["embedding"] if tie else g_ref[1]["lm_head"]["kernel"]
  assert float(jnp.max(jnp.abs(head))) > 0


def test_lora_step_loss_and_adapter_grads_equal_the_full_logits_path():
  """train.loss_sums (the step's loss) against forward() + optax on a packed, loss-masked batch."""
  cfg = model.ModelConfig.preset("tiny", vocab_size=256)
  lcfg = lora.LoraConfig(rank=4, alpha=8, targets=lora.ALL_TARGETS)
  params = model.init(cfg, jax.random.key(0))
  ad = jax.tree.map(lambda a: a + 0.02, lora.init(cfg, lcfg, jax.random.key(1)))
  rs = np.random.RandomState(0)
  seg = np.repeat(np.array([[1] * 20 + [2] * 30 + [0] * 14]), 2, axis=0).astype(np.int32)
  pos = np.concatenate([np.arange(20), np.arange(30), np.zeros(14, int)])[None].repeat(2, 0).astype(np.int32)
  batch = {"tokens": jnp.asarray(rs.randint(0, 256, seg.shape), jnp.int32), "segment_ids": jnp.asarray(seg),
           "positions": jnp.asarray(pos), "loss_mask": jnp.asarray(rs.rand(*seg.shape) > 0.5, jnp.int32)}

  def ref(a):
    logits = model.forward(cfg, params, batch["tokens"], segment_ids=batch["segment_ids"],
                           positions=batch["positions"], adapters=a, lora_cfg=lcfg)
    s = batch["segment_ids"]
    w = ((batch["loss_mask"][:, 1:] > 0) & (s[:, 1:] == s[:, :-1]) & (s[:, 1:] != 0)).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], batch["tokens"][:, 1:])
    return jnp.sum(nll * w), jnp.sum(w)

  ours = lambda a: train.loss_sums(a, params, batch, None, cfg=cfg, lcfg=lcfg, mode="lora")  # noqa: E731
  (l_ours, n_ours), g_ours = jax.jit(jax.value_and_grad(ours, has_aux=True))(ad)
  (l_ref, n_ref), g_ref = jax.jit(jax.value_and_grad(ref, has_aux=True))(ad)
  assert float(n_ours) == float(n_ref) > 0
  np.testing.assert_allclose(l_ours, l_ref, rtol=1e-5)
  jax.tree.map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6), g_ours, g_ref)


def test_no_vocab_sized_buffer_of_the_whole_batch():
  """The compiled step holds at most one chunk of logits: its temporaries stay far below [B,T,V] float32."""
  cfg = model.ModelConfig.preset("tiny", vocab_size=8192)
  params = model.init(cfg, jax.random.key(0))
  b, t = 4, 256
  x = jnp.ones((b, t, cfg.dim))
  tokens, w = jnp.zeros((b, t), jnp.int32), jnp.ones((b, t - 1))
  grad = jax.jit(jax.grad(lambda x_: loss.next_token_nll(cfg, params, x_, tokens, w, chunk=32)))
  temp = grad.lower(x).compile().memory_analysis().temp_size_in_bytes
  full = b * t * cfg.vocab_size * 4
  assert temp < full / 3, (temp, full)

"""The loss-only head (loss.next_token_nll with loss_cap): the head runs only at the loss positions,
gathered into [B,cap,D]; same loss and gradients as the full-logits path, float32."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hinqa_jax import lora, loss, model, packing, train


def _full_logits_loss(cfg, params, x_btd, tokens_bt, w_bt):
  logits = model.logits_from_hidden(cfg, params, x_btd)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens_bt[:, 1:])
  return jnp.sum(nll * w_bt)


@pytest.mark.parametrize("tie,chunk", [(False, None), (True, 4)])
def test_loss_and_gradients_equal_the_full_logits_path(tie, chunk):
  cfg = model.ModelConfig.preset("tiny", vocab_size=300, tie_embeddings=tie)
  params = model.init(cfg, jax.random.key(0))
  b, t, cap = 4, 40, 10
  tokens = jax.random.randint(jax.random.key(1), (b, t), 0, cfg.vocab_size)
  w = np.zeros((b, t - 1), np.float32)
  w[0, [3, 4, 5, 20, 38]] = 1.0  # scattered, the last position included
  w[1, 29:39] = 1.0  # exactly `cap` weighted positions: the cap is reached
  # row 2: no loss position at all
  w[3, ::5] = 0.5  # 8 positions, non-unit weights
  x = jax.random.normal(jax.random.key(3), (b, t, cfg.dim))
  ours = lambda x_, p: loss.next_token_nll(cfg, p, x_, tokens, jnp.asarray(w), chunk=chunk, loss_cap=cap)  # noqa: E731
  ref = lambda x_, p: _full_logits_loss(cfg, p, x_, tokens, jnp.asarray(w))  # noqa: E731
  np.testing.assert_allclose(jax.jit(ours)(x, params), jax.jit(ref)(x, params), rtol=1e-5)
  g_ours = jax.jit(jax.grad(ours, argnums=(0, 1)))(x, params)
  g_ref = jax.jit(jax.grad(ref, argnums=(0, 1)))(x, params)
  jax.tree.map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5), g_ours, g_ref)
  assert float(jnp.max(jnp.abs(g_ours[0][2]))) == 0.0  # the row without loss gets no gradient
  assert float(jnp.max(jnp.abs(g_ref[0][1, 29:39]))) > 0


def test_lora_step_with_the_packers_cap_equals_the_full_head():
  """train.loss_sums with packing.loss_cap of the batch against the head on every position."""
  cfg = model.ModelConfig.preset("tiny", vocab_size=256)
  lcfg = lora.LoraConfig(rank=4, alpha=8, targets=lora.ALL_TARGETS)
  params = model.init(cfg, jax.random.key(0))
  ad = jax.tree.map(lambda a: a + 0.02, lora.init(cfg, lcfg, jax.random.key(1)))
  rs = np.random.RandomState(0)
  t = 160
  seg = np.repeat(np.array([[1] * 60 + [2] * 70 + [0] * 30]), 2, axis=0).astype(np.int32)
  pos = np.concatenate([np.arange(60), np.arange(70), np.zeros(30, int)])[None].repeat(2, 0).astype(np.int32)
  mask = np.zeros(seg.shape, np.int32)
  mask[0, 40:60] = mask[0, 110:130] = 1  # two answers
  mask[1, 5:9] = 1
  batch = {"tokens": jnp.asarray(rs.randint(0, 256, seg.shape), jnp.int32), "segment_ids": jnp.asarray(seg),
           "positions": jnp.asarray(pos), "loss_mask": jnp.asarray(mask)}
  cap = packing.loss_cap(mask, t)
  assert cap == 64 < t

  def run(c):
    f = lambda a: train.loss_sums(a, params, batch, None, cfg=cfg, lcfg=lcfg, mode="lora", loss_cap=c)  # noqa: E731
    return jax.jit(jax.value_and_grad(f, has_aux=True))(ad)

  (l_cap, n_cap), g_cap = run(cap)
  (l_all, n_all), g_all = run(None)
  assert float(n_cap) == float(n_all) == 44  # every answer token is a target (of the token before it)
  np.testing.assert_allclose(l_cap, l_all, rtol=1e-5)
  jax.tree.map(lambda a, r: np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6), g_cap, g_all)


def test_loss_cap_rounds_the_fullest_row_up():
  m = np.zeros((3, 512), np.int32)
  m[1, :65] = 1
  assert packing.loss_cap(m, 512) == 128
  assert packing.loss_cap(m[:1], 512) == 64  # no loss token anywhere: still a valid shape
  assert packing.loss_cap(np.ones((1, 100), np.int32), 100) == 100  # never above seq_len

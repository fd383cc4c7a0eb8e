"""Generation against transformers' greedy generate, stop ids, and sampling controls."""
import numpy as np
import pytest
import torch

from helpers import tiny_hf_model
from hinqa_jax import decode, hf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  d = tmp_path_factory.mktemp("tiny")
  m = tiny_hf_model(d, kv_heads=2, llama3_scaling=True)
  cfg, params = hf.load_hf(d)
  return m, cfg, params


def _hf_greedy(m, prompt, n):
  with torch.no_grad():
    out = m.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                     eos_token_id=None, pad_token_id=0)
  return out[0, len(prompt):].tolist()


def test_greedy_matches_transformers_batch_of_different_lengths(tiny):
  m, cfg, params = tiny
  rs = np.random.RandomState(1)
  prompts = [rs.randint(4, 256, n).tolist() for n in (5, 12, 20, 3, 17)]
  ours = decode.generate(cfg, params, prompts, max_new_tokens=32, eos_ids=[])
  for prompt, got in zip(prompts, ours):
    assert got == _hf_greedy(m, prompt, 32)


def test_stops_at_any_stop_id_per_row(tiny):
  m, cfg, params = tiny
  rs = np.random.RandomState(2)
  prompts = [rs.randint(4, 256, n).tolist() for n in (6, 9)]
  full = [_hf_greedy(m, q, 24) for q in prompts]
  # Row 0 must stop at a token it first emits at step i >= 3, row 1 at one it first emits at step j >= 6,
  # each absent from the other row's kept prefix: two stop ids, each ending one row.
  i = next(i for i in range(3, 24) if full[0][i] not in full[0][:i] and full[0][i] not in full[1])
  stop_a = full[0][i]
  j = next(j for j in range(6, 24) if full[1][j] not in full[1][:j] and full[1][j] not in full[0][:i + 1])
  stop_b = full[1][j]
  ours = decode.generate(cfg, params, prompts, max_new_tokens=24, eos_ids=[stop_a, stop_b])
  assert ours[0] == full[0][:i]
  assert ours[1] == full[1][:j]


def test_sampling_is_seeded_and_filtered(tiny):
  _, cfg, params = tiny
  prompts = [[5, 6, 7], [8, 9, 10, 11]]
  a = decode.generate(cfg, params, prompts, 16, temperature=1.0, top_p=0.9, seed=7, eos_ids=[])
  b = decode.generate(cfg, params, prompts, 16, temperature=1.0, top_p=0.9, seed=7, eos_ids=[])
  c = decode.generate(cfg, params, prompts, 16, temperature=1.0, top_p=0.9, seed=8, eos_ids=[])
  assert a == b and a != c
  greedy = decode.generate(cfg, params, prompts, 16, eos_ids=[])
  assert decode.generate(cfg, params, prompts, 16, temperature=1.0, top_k=1, seed=3, eos_ids=[]) == greedy
  assert decode.generate(cfg, params, prompts, 16, temperature=0.7, top_p=1e-6, seed=3, eos_ids=[]) == greedy


def test_top_k_and_top_p_masks():
  import jax
  import jax.numpy as jnp
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(0), 400)
  draw = lambda **kw: {int(decode.sample_logits(logits, k, 1.0, **kw)[0]) for k in keys}
  assert draw(top_k=2, top_p=1.0) == {0, 1}
  assert draw(top_k=0, top_p=0.7) == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 reaches it
  assert draw(top_k=0, top_p=0.85) == {0, 1, 2}


def test_bad_requests(tiny):
  _, cfg, params = tiny
  with pytest.raises(ValueError, match="at least one token"):
    decode.generate(cfg, params, [[1, 2], []])
  with pytest.raises(ValueError, match="exceeds max_seq_len 512"):
    decode.generate(cfg, params, [[1] * 500], max_new_tokens=20)
  assert decode.generate(cfg, params, []) == []


def test_greedy_on_a_mesh_equals_one_device(tiny):
  # Rows and the per-layer KV cache split over (data, fsdp) of 8 devices (5 prompts: padded to 8 rows).
  from hinqa_jax import sharding
  _, cfg, params = tiny
  rs = np.random.RandomState(2)
  prompts = [rs.randint(4, 256, n).tolist() for n in (5, 12, 20, 3, 17)]
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1})
  on_mesh = decode.generate(cfg, params, prompts, max_new_tokens=16, eos_ids=[], mesh=mesh)
  assert on_mesh == decode.generate(cfg, params, prompts, max_new_tokens=16, eos_ids=[])
  assert [len(r) for r in on_mesh] == [16] * 5

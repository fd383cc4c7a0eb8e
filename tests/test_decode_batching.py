"""Evaluation batches sized by cache slots, a long prompt's prefill through the blocked attention, and the
eval plan's cache bytes."""
import numpy as np
import torch

from helpers import tiny_hf_model
from hinqa_jax import decode, hf, plan
from hinqa_jax.config import default_config


def test_token_batches_cap_rows_and_cache_slots():
  lens = [300, 10, 20, 1000, 15, 700]
  batches = decode.token_batches(lens, max_new_tokens=24, max_rows=3, max_slots=2048)
  assert sorted(i for b in batches for i in b) == list(range(len(lens)))  # every prompt once
  assert [[lens[i] for i in b] for b in batches] == [[10, 15, 20], [300, 700], [1000]]  # 2 x 728 slots fit, 1000 alone
  for b in batches:
    longest = decode.bucket(max(lens[i] for i in b), 16)
    assert len(b) == 1 or len(b) * (longest + 24) <= 2048
  assert decode.token_batch_rows(2048 - 128, 128, 32) == 32  # the 8B eval config: 32 rows of 2048 slots
  assert decode.token_batch_rows(4096, 128, 32) == 15


def test_long_prompts_prefill_by_blocks_matches_transformers(tmp_path):
  """Prompts past one attention block (128): the prefill's blocked attention and the cache it writes."""
  m = tiny_hf_model(tmp_path, kv_heads=2, llama3_scaling=True)
  cfg, params = hf.load_hf(tmp_path)
  rs = np.random.RandomState(3)
  prompts = [rs.randint(4, 256, n).tolist() for n in (290, 200)]
  ours = decode.generate(cfg, params, prompts, max_new_tokens=6, eos_ids=[])
  for prompt, got in zip(prompts, ours):
    with torch.no_grad():
      ref = m.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                       eos_token_id=None, pad_token_id=0)
    assert got == ref[0, len(prompt):].tolist()


def test_eval_plan_counts_the_cache_and_says_what_fits():
  c = default_config()
  c.model.preset, c.model.vocab_size = "tiny", 512
  c.data.seq_len, c.eval.max_new_tokens, c.eval.batch_size = 128, 16, 8
  p = plan.plan_eval(c, "cpu-2")
  cfg_layers, kv, e = 2, 2, 16  # the tiny preset
  slots = 128  # bucket(128 - 16) + 16
  assert p["rows"] == 8 and p["prompt_len"] == 112
  assert p["per_device"]["cache"] == 2 * cfg_layers * (8 // 2) * kv * slots * e * 4  # k and v, rows split
  assert p["per_device"]["total"] >= p["per_device"]["cache"] + p["per_device"]["weights"]
  assert p["fit"]["fits"] is None  # XLA:CPU: no accelerator memory to judge against
  assert "eval plan: generate 8 rows" in plan.eval_report(p, {"name": "cpu-2"})


def test_eval_plan_on_8_devices_keeps_the_prefill_split_by_rows():
  """Rows split 8 ways: each device's temporaries (prefill activations) a fraction of one device doing all
  rows. Left to itself the partitioner gathered the rows and every device computed the whole batch."""
  c = default_config()
  c.model.preset, c.model.vocab_size = "tiny", 512
  c.data.seq_len, c.eval.max_new_tokens, c.eval.batch_size = 128, 16, 16
  one, eight = plan.plan_eval(c, "cpu-8", devices=1), plan.plan_eval(c, "cpu-8")
  assert eight["rows"] == one["rows"] == 16
  assert eight["per_device"]["temp"] < one["per_device"]["temp"] / 4

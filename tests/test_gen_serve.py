"""gen's OpenAI backend against a real OpenAI-compatible server no one here wrote: `transformers serve`.

The test saves a tiny random LlamaForCausalLM with the bundled tokenizer (data/tokenizer) to a temp
dir, starts `transformers serve <dir>` on 127.0.0.1 (offline, CPU), synthesizes three contexts through
configs-style teacher settings and checks the accounting: one request and one response per unit, the
server's token counts, finish_reason "length" for the 16-token budget, and truncations counted.
"""
import json
import os

import pytest

import gen
from helpers import transformers_serve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  import torch
  import transformers
  model_dir = tmp_path_factory.mktemp("tiny_llama")
  tok = transformers.AutoTokenizer.from_pretrained(os.path.join(ROOT, "data", "tokenizer"))
  cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(cfg).save_pretrained(model_dir)
  tok.save_pretrained(model_dir)
  with transformers_serve(model_dir / "serve.log", model_dir) as url:
    yield url, str(model_dir)


def test_synthesize_through_transformers_serve(server, tmp_path):
  url, model_dir = server
  c = gen.default_config()
  c.out_dir = str(tmp_path / "gen")
  c.data.train = (os.path.join(ROOT, "data", "vatika_mini", "train.json"),)
  c.teachers.served = gen.teacher("openai", model_dir, base_url=url, temperature=0.0, max_tokens=MAX_TOKENS,
                                  batch_size=3, concurrency=2, max_tries=1, timeout_s=60.0, structured="json_schema")
  c.prompt.num_examples = 0
  c.prompt.show_existing = False
  c.synth.max_contexts = 3
  c.synth.progress = False
  with pytest.raises(RuntimeError, match="teacher 'served': no pair from 3 prompts"):  # saved, then an error
    gen.synthesize(c)
  summary = json.load(open(os.path.join(c.out_dir, "summary.json"), encoding="utf-8"))["teachers"]["served"]
  stats = summary["backend_stats"]
  # one request and one 200 response per unit; nothing retried, failed or too long
  assert summary["units"] == 3 and sum(summary["status"].values()) == 3
  assert stats["requests"] == stats["responses"] == 3
  assert stats["retries"] == stats["failures"] == stats["too_long"] == 0 and summary["status"]["failed"] == 0
  # the server's own token counts: a random model never says eos within 16 tokens
  assert stats["completion_tokens"] == 3 * MAX_TOKENS and stats["prompt_tokens"] > 3 * 100
  done = [json.loads(l) for l in open(os.path.join(c.out_dir, "served.done.jsonl"), encoding="utf-8")]
  assert [e["finish_reason"] for e in done] == ["length"] * 3 and summary["truncated"] == 3
  # random text is no QA list: every unit is garbage, with its raw text kept for inspection
  assert summary["status"]["garbage"] == 3 and summary["pairs"] == 0 and all(e["raw"] for e in done)
  report = gen.curate(c, originals=[], heldout={}, dry_run=True)
  assert report["parse"]["served"]["truncated_outputs"] == 3 and report["totals"]["input"] == 0
  with pytest.raises(ValueError, match=r"curate: no synthetic pair in .*served.jsonl"):  # M2 would train on nothing
    gen.curate(c, originals=[], heldout={})
  assert not os.path.exists(os.path.join(c.out_dir, "curated", "synthetic.jsonl"))

"""End to end on CPU: synthesize with our JAX engine on a tiny random HF checkpoint, curate, read back.

A random model writes no usable QA, so a second, scripted teacher supplies pairs for curation; the
JAX teacher is checked for what it must do: run through hf.load_hf / tokenizer / decode.generate,
skip and count a context longer than its window, and decode greedily the same way twice.
"""
import json
import os

import pytest

import gen
from gen import backends, prompts
from gen.synthesize import context_id

CTX_AARTI = ("दशाश्वमेध घाट पर गंगा आरती हर शाम सूर्यास्त के बाद होती है। आरती लगभग पैंतालीस मिनट तक चलती है। "
             "इसमें सात पुजारी बड़े दीपकों के साथ भाग लेते हैं।")
CTX_MUSEUM = "भारत कला भवन संग्रहालय काशी हिंदू विश्वविद्यालय के परिसर में है। यह संग्रहालय रविवार को बंद रहता है।"
CTX_LONG = "वाराणसी की गलियों में अनेक पुराने मंदिर, दुकानें और घर हैं जिन्हें देखने दूर-दूर से लोग आते हैं। " * 60
TEST2 = {"id": "t2-1", "question": "भगवान बुद्ध ने पहला उपदेश कहाँ दिया था?",
         "answer": "भगवान बुद्ध ने अपना पहला उपदेश सारनाथ में दिया था।"}


def vatika(path, domains):
  doc = {"domains": [{"domain": d, "contexts": [{"context": c, "qas": qas} for c, qas in ctxs]} for d, ctxs in domains]}
  path.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
  return str(path)


def tiny_checkpoint(model_dir):
  """A random 2-layer LLaMA with a BPE tokenizer (Llama-3 specials and chat template), HF format."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  from hinqa_jax import tokenizer as tokenizer_lib
  texts = [CTX_AARTI, CTX_MUSEUM, prompts.GEN_SYSTEM, prompts.GEN_USER, prompts.GEN_EXISTING]
  tok = tokenizer_lib.train_tokenizer(texts, model_dir, vocab_size=600, min_frequency=1)
  torch.manual_seed(0)
  cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                    bos_token_id=tok.bos_token_id, eos_token_id=tokenizer_lib.stop_ids(tok), tie_word_embeddings=False)
  LlamaForCausalLM(cfg).float().save_pretrained(model_dir)


class Scripted:
  name, model = "scripted", "fake-teacher"

  def generate(self, batch, params):
    out = []
    for m in batch:
      user = m[1]["content"]
      if "आरती" in user.split("संदर्भ:")[1]:
        pairs = [{"question": "आरती में कितने पुजारी भाग लेते हैं?", "answer": "आरती में सात पुजारी भाग लेते हैं।"},
                 {"question": TEST2["question"], "answer": TEST2["answer"]}]
      else:
        pairs = [{"question": "भारत कला भवन संग्रहालय किस दिन बंद रहता है?",
                  "answer": "भारत कला भवन संग्रहालय रविवार को बंद रहता है।"}]
      out.append(json.dumps(pairs, ensure_ascii=False))
    return out


def make_config(tmp_path, model_dir, out):
  c = gen.default_config()
  c.out_dir = str(tmp_path / out)
  train = vatika(tmp_path / "train.json", [
    ("Ganga Aarti", [(CTX_AARTI, [{"id": "o1", "question": "गंगा आरती कहाँ होती है?",
                                    "answer": "गंगा आरती दशाश्वमेध घाट पर होती है।"}])]),
    ("Museum", [(CTX_MUSEUM, [{"id": "o2", "question": "भारत कला भवन कहाँ है?",
                                "answer": "भारत कला भवन काशी हिंदू विश्वविद्यालय के परिसर में है।"}]),
                (CTX_LONG, [{"id": "o3", "question": "गलियों में क्या है?", "answer": "गलियों में पुराने मंदिर हैं।"}])])])
  c.data.train = (train,)
  c.data.val = vatika(tmp_path / "val.json", [("Kund", [("लोलार्क कुंड अस्सी घाट के पास है।", [
    {"id": "v1", "question": "लोलार्क कुंड कहाँ है?", "answer": "लोलार्क कुंड अस्सी घाट के पास है।"}])])])
  c.data.test1 = c.data.val
  c.data.test2 = vatika(tmp_path / "test2.json", [("General", [(
    "सारनाथ वाराणसी से लगभग दस किलोमीटर दूर है। यहाँ भगवान बुद्ध ने अपना पहला उपदेश दिया था।",
    [{"id": TEST2["id"], "question": TEST2["question"], "answer": TEST2["answer"]}])])])
  c.teachers.student = gen.teacher("jax", str(model_dir), temperature=0.0, max_tokens=24, batch_size=4,
                                   max_model_len=700)
  c.teachers.scripted = gen.teacher("openai", "fake-teacher", base_url="http://127.0.0.1:1/v1")
  c.prompt.num_examples = 1
  c.synth.progress = False
  return c


def test_synthesize_with_jax_engine_then_curate_and_read_back(tmp_path):
  from hinqa_jax import hf, tokenizer
  from hinqa_jax.records import read_records

  model_dir = tmp_path / "tiny_hf"
  tiny_checkpoint(model_dir)
  c = make_config(tmp_path, model_dir, "run1")
  # The student (random weights, built from its config) writes only garbage: the run is an error naming it,
  # after every output and summary is written.
  with pytest.raises(RuntimeError, match=r"teacher 'student': no pair from 3 prompts"):
    gen.synthesize(c, backends={"scripted": Scripted()})
  summary = json.load(open(os.path.join(c.out_dir, "summary.json"), encoding="utf-8"))
  student = summary["teachers"]["student"]
  assert summary["contexts"] == 3 and student["units"] == 3
  assert student["status"]["too_long"] == 1 and student["status"]["failed"] == 0
  assert sum(student["status"].values()) == 3
  done = [json.loads(l) for l in open(os.path.join(c.out_dir, "student.done.jsonl"), encoding="utf-8")]
  too_long = [e for e in done if e["status"] == "too_long"]
  long_id = context_id("Museum", CTX_LONG)
  assert [e["context_id"] for e in too_long] == [long_id] and "700" in too_long[0]["error"]

  # greedy decoding through the real engine is reproducible: a second run writes the same bytes
  c2 = make_config(tmp_path, model_dir, "run2")
  with pytest.raises(RuntimeError, match="no pair"):
    gen.synthesize(c2, backends={"scripted": Scripted()})
  for name in ("student.jsonl", "student.done.jsonl", "scripted.jsonl"):
    with open(os.path.join(c.out_dir, name), "rb") as a, open(os.path.join(c2.out_dir, name), "rb") as b:
      assert a.read() == b.read(), name

  # the in-memory route the pipeline uses gives what the checkpoint route gives
  cfg, params = hf.load_hf(model_dir)
  loaded = backends.JaxBackend.from_loaded(cfg, params, tokenizer.load_tokenizer(model_dir), name="student")
  from_path = backends.JaxBackend.from_path(str(model_dir), name="student")
  msgs = [prompts.build_messages("Museum", CTX_MUSEUM, [], 2)]
  p = backends.SamplingParams(temperature=0.0, max_tokens=12)
  text = loaded.generate(msgs, p)[0]
  assert isinstance(text, str) and text == from_path.generate(msgs, p)[0]

  report = gen.curate(c)
  assert report["inputs"]["heldout"] == {"val": 1, "test1": 1, "test2": 1}
  assert report["per_teacher"]["scripted"]["rejected"]["contaminated"] == 1  # the pair copied from test2
  curated = read_records(os.path.join(c.out_dir, "curated", "synthetic.jsonl"))
  scripted = sorted(r.question for r in curated if r.source == "scripted")
  assert scripted == ["आरती में कितने पुजारी भाग लेते हैं?", "भारत कला भवन संग्रहालय किस दिन बंद रहता है?"]
  assert all(r.meta["provenance"]["prompt_version"] == prompts.PROMPT_VERSION for r in curated)
  rejected = [json.loads(l) for l in open(os.path.join(c.out_dir, "curated", "rejected.jsonl"), encoding="utf-8")]
  # the museum answer the scripted teacher also gives for the long street context is not in that
  # context: its weekday (a date) is the first thing the faithfulness checks catch
  assert sorted((r["reason"], r["provenance"]["context_id"] == long_id) for r in rejected if r["source"] == "scripted") == [
    ("contaminated", False), ("unsupported_number", True)]

"""Dress rehearsal of the real experiment: launch/recipe.sh's steps, run as a user runs them, with only size
overrides (a few steps, rows, contexts and answers).

Laid out as the recipe expects: the VATIKA files under $VATIKA (train/val/test1/test2.json, VATIKA's nested
format), and under $MODELS a tiny random LLaMA with the bundled tokenizer standing in for Llama-3.1-8B, a
tiny random BERT for BERTScore, and two tiny teachers named as the 70B and 14B teachers' directories. The
teachers are served by a real OpenAI-compatible server (`transformers serve`, which loads each model from
the path the gen config names); each teacher's generation_config biases it (transformers' own
`sequence_bias`) to write one fixed JSON list of two Hindi pairs that its context supports, so curation
has something to keep. Then: synthesize in two shards, curate, plan (XLA:CPU), run.

The recipe's commands do the rest; the test fails if a stage reads a path another stage did not write:
M2, M3, per-teacher and ratio runs need the curated file gen wrote under $WORK/gen, and results.json must
name it among the data the run read, with every experiment scored.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLACES = ("दशाश्वमेध घाट", "अस्सी घाट", "मणिकर्णिका घाट", "तुलसी घाट")
# Sentences every training context carries; the teachers' pairs restate them (grounded, not original QAs).
FACTS = ("यहाँ नाव की सवारी सुबह छह बजे शुरू होती है। संग्रहालय का टिकट पचास रुपये का है। "
         "शाम को गंगा आरती होती है। मंदिर के पास मिठाई की कई दुकानें हैं।")
TEACHER_PAIRS = {
    "Llama-3.3-70B-Instruct": [("नाव की सवारी किस समय शुरू होती है?", "नाव की सवारी सुबह छह बजे शुरू होती है।"),
                               ("संग्रहालय का टिकट कितने रुपये का है?", "संग्रहालय का टिकट पचास रुपये का है।")],
    "phi-4": [("शाम को कौन सा आयोजन होता है?", "शाम को गंगा आरती होती है।"),
              ("मंदिर के पास किस चीज़ की दुकानें हैं?", "मंदिर के पास मिठाई की कई दुकानें हैं।")],
}
HELD_OUT = {  # split -> (place, context): other places, other facts (no contamination with the pairs above)
    "val": ("सारनाथ", "सारनाथ में बौद्ध स्तूप है। यह वाराणसी से दस किलोमीटर दूर है।"),
    "test1": ("दशाश्वमेध घाट", "दशाश्वमेध घाट पर हर दिन भीड़ रहती है। यह सबसे पुराना घाट माना जाता है।"),
    "test2": ("रामनगर किला", "रामनगर किला गंगा के पूर्वी तट पर है। इसमें एक संग्रहालय भी है।"),
}
SIZE = {  # the only overrides: sizes
    "gen": ["--config.synth.max_contexts=4", "--config.synth.samples_per_context=1"],
    "run": ["--config.train.num_steps=2", "--config.run.stage2_steps=2", "--config.train.batch_size=2",
            "--config.train.warmup_steps=1", "--config.train.eval_every_steps=2", "--config.data.seq_len=512",
            "--config.eval.max_examples=2", "--config.eval.max_new_tokens=4", "--config.eval.batch_size=2",
            "--config.eval.n_bootstrap=40", "--config.eval.n_trials=20",
            "--config.eval.bertscore_layer=2",  # the stand-in BERT has 2 layers (mBERT 12)
            "--config.run.ratios=(0.5,)"],  # one point of the synthetic-ratio sweep
}


def _vatika(root: Path) -> None:
  def record(place, context, qas, prefix):
    return {"context": context, "qas": [{"id": f"{prefix}-{i}", "question": q, "answer": a}
                                        for i, (q, a) in enumerate(qas)]}
  train = [record(p, f"{p} वाराणसी का एक प्रसिद्ध स्थान है। {FACTS}",
                  [(f"{p} किस शहर में है?", f"{p} वाराणसी शहर में है।"),
                   (f"{p} कैसा स्थान है?", f"{p} वाराणसी का एक प्रसिद्ध स्थान है।")], f"train{i}")
           for i, p in enumerate(PLACES)]
  splits = {"train": [{"domain": "Ghat", "contexts": train[:2]}, {"domain": "General", "contexts": train[2:]}]}
  for split, (place, context) in HELD_OUT.items():
    qas = [(f"{place} के बारे में क्या बताया गया है?", context.split("।")[0] + "।"),
           (f"{place} की दूसरी बात क्या है?", context.split("।")[1].strip() + "।")]
    splits[split] = [{"domain": "General", "contexts": [record(place, context, qas, split)]}]
  root.mkdir(parents=True)
  for split, domains in splits.items():
    (root / f"{split}.json").write_text(json.dumps({"domains": domains}, ensure_ascii=False), encoding="utf-8")


def _teacher(path: Path, tok, pairs, seed: int) -> str:
  """A tiny random LLaMA whose generation_config's sequence_bias makes it write `pairs` as gen's JSON object
  after the chat template's assistant header, then <|eot_id|>; checked here with transformers' generate."""
  import torch
  import transformers
  text = json.dumps({"pairs": [{"question": q, "answer": a} for q, a in pairs]}, ensure_ascii=False)
  eot = tok.convert_tokens_to_ids("<|eot_id|>")
  header = tok.encode("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False)
  target = tok.encode(text, add_special_tokens=False) + [eot]
  seq = header + target
  # each target token biased after the header and every target token before it (never the prompt's content)
  bias = [[seq[:i + 1], 100.0] for i in range(len(header), len(seq))]
  cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                                 bos_token_id=tok.bos_token_id, eos_token_id=eot, pad_token_id=tok.pad_token_id)
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(cfg).eval()
  model.generation_config = transformers.GenerationConfig(
      sequence_bias=bias, eos_token_id=eot, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
  model.save_pretrained(path)
  tok.save_pretrained(path)
  prompt = tok.apply_chat_template([{"role": "user", "content": f"संदर्भ: {PLACES[0]} {FACTS}"}],
                                   add_generation_prompt=True, tokenize=False)
  ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
  with torch.no_grad():
    out = model.generate(ids, max_new_tokens=len(target) + 8, do_sample=True, temperature=0.7, top_p=0.95)
  assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == text  # the teacher writes what we planted
  return text


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
  """$VATIKA and $MODELS as the recipe expects them, and a `transformers serve` with no fixed model."""
  import torch
  import transformers

  from helpers import tiny_bert, transformers_serve
  root = tmp_path_factory.mktemp("rehearsal")
  _vatika(root / "vatika")
  models = root / "models"
  tok = transformers.AutoTokenizer.from_pretrained(REPO / "data" / "tokenizer")
  student = models / "Meta-Llama-3.1-8B-Instruct"
  cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.convert_tokens_to_ids("<|eot_id|>"))
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(cfg).save_pretrained(student)
  tok.save_pretrained(student)
  tiny_bert(models / "bert-base-multilingual-cased")
  written = {name: _teacher(models / name, tok, pairs, seed) for seed, (name, pairs) in enumerate(TEACHER_PAIRS.items())}
  with transformers_serve(root / "serve.log") as url:  # no fixed model: each request names its path
    yield {"root": root, "url": url, "written": written}


def _recipe(layout, *args, timeout=600, ok=True) -> str:
  root = layout["root"]
  env = {**os.environ, "VATIKA": str(root / "vatika"), "MODELS": str(root / "models"), "WORK": str(root / "work"),
         "PYTHON": sys.executable, "PLAN_PYTHON": sys.executable, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  start = time.monotonic()
  out = subprocess.run([str(REPO / "launch" / "recipe.sh"), *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
  print(f"recipe.sh {' '.join(args[:2])}: {time.monotonic() - start:.1f} s")
  assert (out.returncode == 0) == ok, f"recipe.sh {' '.join(args[:2])}: exit {out.returncode}:\n{out.stdout[-3000:]}\n" \
      f"{out.stderr[-6000:]}"
  return out.stdout + out.stderr


def _check_serving_format(merged: Path) -> None:
  """What a server (vLLM, transformers) reads from the merged export, without running one: the architecture in
  config.json, exactly transformers' LlamaForCausalLM tensor names, and the tokenizer's stop ids."""
  import torch
  import transformers
  from safetensors import safe_open
  cfg = transformers.AutoConfig.from_pretrained(merged)
  assert cfg.architectures == ["LlamaForCausalLM"] and cfg.model_type == "llama"
  names = set()
  for f in merged.glob("*.safetensors"):
    with safe_open(f, "np") as g:
      names |= set(g.keys())
  with torch.device("meta"):
    expected = set(transformers.LlamaForCausalLM(cfg).state_dict())
  assert names == expected
  tok = transformers.AutoTokenizer.from_pretrained(merged)
  gen_cfg = transformers.GenerationConfig.from_pretrained(merged)
  assert tok.convert_tokens_to_ids("<|eot_id|>") in gen_cfg.eos_token_id and max(gen_cfg.eos_token_id) < len(tok)


def test_the_recipe_runs_end_to_end_and_every_stage_reads_what_the_one_before_wrote(layout):
  root, work = layout["root"], layout["root"] / "work"
  # The vLLM config's two teachers, served instead by the OpenAI-compatible server (no GPU here).
  serve = [f"--config.teachers.{t}.{k}={v}" for t in ("llama70b", "phi4")
           for k, v in (("backend", "openai"), ("base_url", layout["url"]))]
  for shard in ("0/2", "1/2"):
    _recipe(layout, "synthesize", shard, *serve, *SIZE["gen"])
  curated = work / "gen" / "curated" / "synthetic.jsonl"
  assert not curated.exists()
  _recipe(layout, "curate", *serve, *SIZE["gen"])
  kept = [json.loads(line) for line in curated.read_text(encoding="utf-8").splitlines()]
  # both teachers' pairs, from the first shard's first context (the same pair from other contexts is a duplicate)
  planted = {(q, a) for pairs in TEACHER_PAIRS.values() for q, a in pairs}
  assert {(r["question"], r["answer"]) for r in kept} == planted

  plan = _recipe(layout, "plan", "cpu-1", *SIZE["run"])
  assert "cpu-1" in plan

  # a run that would read the synthetic data from where gen did not write it stops before any work
  before = sorted(work.rglob("*")) if work.exists() else []
  wrong = _recipe(layout, "run", *SIZE["run"], f"--config.data.gen_dir={root / 'elsewhere-gen'}", ok=False)
  assert f"no file {root / 'elsewhere-gen'}/curated/synthetic.jsonl" in wrong
  assert (sorted(work.rglob("*")) if work.exists() else []) == before  # nothing written
  _recipe(layout, "run", *SIZE["run"])
  results = json.loads((work / "results.json").read_text(encoding="utf-8"))
  experiments = {"m1", "m2", "m3", "m2_teacher_llama70b", "m2_teacher_phi4", "m2_r50"}
  assert set(results["results"]) == experiments
  for exp in experiments:  # trained and scored, never "not run: no records in ..."
    assert all(results["results"][exp][s]["n"] == 2 for s in ("val", "test1", "test2")), (exp, results["results"][exp])
  assert "$WORKDIR/gen/curated/synthetic.jsonl" in results["provenance"]["data"]
  _check_serving_format(work / "export" / "m2" / "merged")

  # The README's lines that load the exports, run from another directory (the adapter names its base absolutely)
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  snippet = next(block.split("\n", 1)[1] for block in readme.split("```python")[1:]
                 if "AutoPeftModelForCausalLM" in block.split("```")[0]).split("```")[0]
  snippet = snippet.replace("runs/vatika_8b", str(work)) + "\nimport json\nprint(json.dumps(answers))\n"
  elsewhere = root / "elsewhere"
  elsewhere.mkdir()
  loaded = subprocess.run([sys.executable, "-c", snippet], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # what `make venv`'s editable install gives
  assert loaded.returncode == 0, loaded.stderr[-3000:]
  answers = json.loads(loaded.stdout.strip().splitlines()[-1])
  assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

  finished = {p: p.stat().st_mtime_ns for p in work.glob("*/stage.json")}
  again = _recipe(layout, "run", *SIZE["run"])  # everything is cached, and says so
  for stage in ("m1", "m2", "m3", "m2_teacher_llama70b", "m2_teacher_phi4", "m2_r50", "analysis"):
    assert f"{stage}: up to date, skipped" in again, again[-3000:]
  assert {p: p.stat().st_mtime_ns for p in work.glob("*/stage.json")} == finished  # nothing trained again

"""The stage graph end to end on the tiny model: M1, M2 (from M1's adapters), M3, evaluation, report, export."""
import json
import os

import jax
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from hinqa_jax import config as config_lib, evaluate, lora, pipeline, train
from hinqa_jax.records import read_records
from hinqa_jax.config import default_config


def _synthetic_file(path, n=24):
  """Curated-format synthetic records (as gen/curate writes them), from the training contexts."""
  recs = read_records("data/vatika_mini/train.json")[:n]
  with open(path, "w", encoding="utf-8") as f:
    for i, r in enumerate(recs):
      f.write(json.dumps({"id": f"syn-{i}", "domain": r.domain, "context": r.context,
                          "question": r.question.replace("?", " बताइए?"), "answer": r.answer,
                          "source": "teacher_a" if i % 2 else "teacher_b"}, ensure_ascii=False) + "\n")
  return str(path)


def _config(synthetic):
  c = default_config()
  c.model.preset = "tiny"
  c.data.synthetic = (synthetic,)
  c.data.seq_len = 512
  c.lora.rank = 4
  c.train.num_steps = 4
  c.train.batch_size = 8
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 1
  c.checkpoint.every_steps = 2
  c.run.stage2_steps = 2
  c.run.per_teacher = True
  c.eval.max_examples = 4
  c.eval.max_new_tokens = 8
  c.eval.bertscore_model = "/nonexistent/mbert"
  c.eval.n_bootstrap = 100
  c.eval.n_trials = 200
  c.train.eval_every_steps = 3  # val loss at step 3 and at the last step
  return c


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  d = tmp_path_factory.mktemp("run")
  syn = _synthetic_file(d / "synthetic.jsonl")
  c = _config(syn)
  out = pipeline.run(c, d / "w")
  return c, d / "w", out


def test_results_have_every_experiment_and_split(demo_run):
  _, w, out = demo_run
  md = (w / "results.md").read_text()
  res = json.loads((w / "results.json").read_text())["results"]
  assert set(res) == {"m1", "m2", "m3", "m2_teacher_teacher_a", "m2_teacher_teacher_b"}
  for split in ("val", "test1", "test2"):
    assert f"## {split}" in md
    for exp in ("m1", "m2", "m3"):
      assert res[exp][split]["n"] == 4
      assert 0 <= res[exp][split]["bleu2"] <= 100 and 0 <= res[exp][split]["qa_f1"] <= 100
      assert f"| {exp} | 4 |" in md
  assert "BERTScore: not computed (no model at /nonexistent/mbert)" in md
  for exp in res:  # every cell carries its 95% CI around the score
    for split in ("val", "test1", "test2"):
      for m in ("bleu2", "chrf_pp", "rougeL", "qa_f1"):
        lo, hi = res[exp][split]["ci"][m]
        assert lo <= res[exp][split][m] <= hi, (exp, split, m)
  comparisons = json.loads((w / "results.json").read_text())["comparisons"]
  for split in ("val", "test1", "test2"):
    pairs = [(r["a"], r["b"]) for r in comparisons[split]]
    assert pairs == [("m1", "m2"), ("m1", "m3"), ("m2", "m3"), ("m1", "m2_teacher_teacher_a"),
                     ("m1", "m2_teacher_teacher_b")]
    tests = [m for r in comparisons[split] for m in r["metrics"].values()]
    assert len(tests) == 5 * 5 and all(t["p_holm"] >= t["p"] and t["ci"][0] <= t["delta"] <= t["ci"][1] for t in tests)
  m2_vs_m1 = comparisons["test2"][0]["metrics"]["bleu2"]
  assert m2_vs_m1["delta"] == pytest.approx(res["m2"]["test2"]["bleu2"] - res["m1"]["test2"]["bleu2"])
  assert "## Comparisons" in md and "| m3 vs m2 |" in md and "Holm" in md
  assert (w / "loss.png").stat().st_size > 1000 and (w / "metrics.png").stat().st_size > 1000
  preds = [json.loads(line) for line in (w / "eval" / "m2" / "test2.predictions.jsonl").read_text().splitlines()]
  assert len(preds) == 4 and {"id", "reference", "prediction"} <= set(preds[0])
  # Each stage logged every step, and the val loss every 3 steps and at the last.
  assert [json.loads(x)["step"] for x in (w / "m2" / "metrics.jsonl").read_text().splitlines()] == [1, 2]
  m1_log = [json.loads(x) for x in (w / "m1" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in m1_log if "val_loss" in r] == [3, 4]
  assert all(np.isfinite(r["val_loss"]) and r["val_loss"] > 0 for r in m1_log if "val_loss" in r)


def test_m2_starts_from_m1_adapters(demo_run, tmp_path):
  c, w, _ = demo_run
  cfg = train.model_config(c, 4096)
  lcfg = train.lora_config(c)
  m1, m1_lcfg = evaluate.load_adapters(w / "m1", cfg)
  assert m1_lcfg == lcfg  # rank/alpha/targets read back from the checkpoint's metadata
  # Stage 2 restored from M1 with a zero learning rate: its adapters are M1's final ones, bit for bit.
  c2 = pipeline._with(c, **{"train.learning_rate": 0.0, "train.warmup_steps": 0, "train.num_steps": 1})
  pipeline.train(c2, w, stage="m2_probe", files=tuple(c.data.synthetic), init_from=str(w / "m1" / "checkpoints"),
                 progress=False)
  probe, _ = evaluate.load_adapters(w / "m2_probe", cfg)
  jax.tree.map(np.testing.assert_array_equal, probe, m1)
  fresh = lora.init(cfg, lcfg, jax.random.key(0))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(probe), jax.tree.leaves(fresh)))


def test_rerun_skips_and_changed_config_reruns_dependents(demo_run):
  c, w, _ = demo_run
  stamp = lambda s: os.path.getmtime(w / s / "stage.json")  # noqa: E731
  before = {s: stamp(s) for s in ("m1", "m2", "m3")}
  pipeline.run(c, w)
  assert {s: stamp(s) for s in before} == before  # nothing re-trained
  c2 = pipeline._with(c, **{"run.stage2_steps": 3})
  pipeline.run(c2, w)
  assert stamp("m1") == before["m1"] and stamp("m3") == before["m3"]
  assert stamp("m2") != before["m2"]
  assert [json.loads(x)["step"] for x in (w / "m2" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_export_loads_in_transformers(demo_run):
  _, w, out = demo_run
  merged = AutoModelForCausalLM.from_pretrained(out["export"]["merged"], dtype=torch.float32)
  assert merged.config.num_hidden_layers == 2
  cfg_json = json.loads((w / "export" / "m2" / "peft" / "adapter_config.json").read_text())
  assert cfg_json["r"] == 4 and cfg_json["lora_alpha"] == 32.0


def test_empty_synthetic_data_is_reported_not_fatal(demo_run, tmp_path):
  c, w, _ = demo_run
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  c2 = pipeline._with(c, **{"data.synthetic": (str(empty),), "run.per_teacher": False, "run.export": "m1"})
  pipeline.run(c2, w)
  res = json.loads((w / "results.json").read_text())["results"]
  assert res["m2"]["val"]["note"].startswith("not run: no records in") and res["m1"]["val"]["n"] == 4


def test_demo_config_runs_every_piece_on_a_shoestring(tmp_path):
  """configs/demo.py with minutes cut to seconds: tokenizer, pretrained base, a teacher writing through gen/
  with our JAX engine, curation, M1/M2/M3, report, export. Numbers here mean nothing; the wiring does."""
  c = config_lib.load("configs/demo.py", **{
      "pretrain.steps": 2, "synthetic.teachers": ("teacher_a",), "synthetic.teacher_steps": 2,
      "synthetic.samples_per_context": 1, "synthetic.max_tokens": 16, "gen.synth.max_contexts": 3,
      "gen.synth.progress": False, "train.num_steps": 2, "run.stage2_steps": 1, "checkpoint.every_steps": 2,
      "eval.max_examples": 2, "eval.max_new_tokens": 4})
  out = pipeline.run(c, tmp_path)
  assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
  assert (tmp_path / "base" / "hf" / "model.safetensors").exists()
  summary = json.loads((tmp_path / "gen" / "teacher_a.summary.json").read_text())
  n_units = 3 * c.gen.synth.samples_per_context  # 3 contexts, each prompted that many times
  assert summary["units"] == n_units and sum(summary["status"].values()) == n_units
  assert (tmp_path / "gen" / "curated" / "report.md").exists()
  res = json.loads((tmp_path / "results.json").read_text())["results"]
  assert set(res) == {"m1", "m2", "m3"}
  for exp in res:  # each experiment either trained and scored, or says why not
    for split in ("val", "test1", "test2"):
      s = res[exp][split]
      assert s["n"] == 2 or s["note"].startswith("not run: no records in")
  assert res["m1"]["test2"]["n"] == 2 and "loss.png" in out["plots"]


def _seeded_config(tmp_path):
  syn = _synthetic_file(tmp_path / "synthetic.jsonl")
  return pipeline._with(_config(syn), **{"run.experiments": ("m1", "m3"), "run.per_teacher": False,
                                          "run.seeds": (0, 1), "train.num_steps": 2, "run.export": "",
                                          "train.eval_every_steps": 0})


def test_seeds_twice_from_scratch_give_identical_results_and_a_moved_workdir_reruns_nothing(tmp_path):
  c = _seeded_config(tmp_path)
  pipeline.run(c, tmp_path / "a")
  pipeline.run(c, tmp_path / "b")
  a, b = ((tmp_path / d / "results.json").read_text() for d in ("a", "b"))
  assert a == b
  res = json.loads(a)
  assert sorted(p.name for p in (tmp_path / "a").iterdir() if (p / "stage.json").exists() and p.name[0] == "m") == [
      "m1_s0", "m1_s1", "m3_s0", "m3_s1"]
  cell = res["results"]["m3"]["test1"]
  assert cell["seeds"] == [0, 1] and cell["n"] == 4
  per_seed = [json.loads((tmp_path / "a" / "eval" / f"m3_s{s}" / "stage.json").read_text())["result"]["test1"]
              for s in (0, 1)]
  assert cell["qa_f1"] == pytest.approx(np.mean([s["qa_f1"] for s in per_seed]))
  assert cell["std"]["qa_f1"] == pytest.approx(np.std([s["qa_f1"] for s in per_seed], ddof=1))
  assert [(r["a"], r["b"]) for r in res["comparisons"]["test1"]] == [("m1", "m3")]
  assert res["provenance"]["seeds"] == [0, 1]
  _moved_workdir_reruns_nothing(c, tmp_path / "a", tmp_path / "elsewhere" / "a")


def _moved_workdir_reruns_nothing(c, w, moved):
  """Stage, data and evaluation keys hold content, not the workdir's path: a copied workdir is up to date."""
  import shutil

  from hinqa_jax import packing
  shutil.copytree(w, moved)

  def fail(*args, **kwargs):
    raise AssertionError("re-ran work in a moved workdir")
  with pytest.MonkeyPatch.context() as mp:
    for target, name in ((train, "run_stage"), (pipeline, "evaluate"), (packing, "prepare")):
      mp.setattr(target, name, fail)
    pipeline.run(c, moved)
  assert (moved / "results.json").read_text() == (w / "results.json").read_text()  # no absolute path in it

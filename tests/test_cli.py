"""The real entry point: `python -m hinqa_jax train` for 1 step, resumed to 2, then evaluate and export."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, devices=2):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", "hinqa_jax", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def test_train_one_step_then_resume_to_two_then_evaluate_and_export(tmp_path):
  w = str(tmp_path / "w")
  common = ["--config=configs/tiny.py", f"--workdir={w}", "--config.train.batch_size=4",
            "--config.checkpoint.every_steps=1"]
  _cli("train", *common, "--config.train.num_steps=1")
  lines = [json.loads(x) for x in open(os.path.join(w, "train", "metrics.jsonl"))]
  assert [x["step"] for x in lines] == [1]
  _cli("train", *common, "--config.train.num_steps=2")
  lines2 = [json.loads(x) for x in open(os.path.join(w, "train", "metrics.jsonl"))]
  assert [x["step"] for x in lines2] == [1, 2] and lines2[0] == lines[0]  # step 1 kept, step 2 added
  assert sorted(os.listdir(os.path.join(w, "train", "checkpoints"))) == ["1", "2"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(w, "train", "tb")))

  out = _cli("evaluate", *common, "--config.eval.max_examples=2", "--config.eval.max_new_tokens=4")
  scores = json.loads(out.stdout[out.stdout.index("{"):])
  assert set(scores) == {"val", "test1", "test2"} and scores["test2"]["n"] == 2
  _cli("export", *common)
  cfg = json.load(open(os.path.join(w, "export", "train", "peft", "adapter_config.json")))
  assert cfg["r"] == 16 and cfg["lora_alpha"] == 32.0  # read from the checkpoint, not re-typed


def test_typo_in_override_is_an_error(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", "hinqa_jax", "train", "--config=configs/tiny.py",
                        f"--workdir={tmp_path}", "--config.train.num_stepz=3"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "num_stepz" in out.stderr

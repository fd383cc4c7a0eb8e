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
  # The merged export's special tokens are the bundled tokenizer's (vocab 4096), not Llama-3.1's 128000+:
  # transformers' plain generate stops at the ids evaluation stops at (<|eot_id|> included).
  from transformers import AutoTokenizer, GenerationConfig
  from hinqa_jax.tokenizer import stop_ids
  merged = os.path.join(w, "export", "train", "merged")
  tok = AutoTokenizer.from_pretrained(merged)
  gen_cfg, hf_cfg = GenerationConfig.from_pretrained(merged), json.load(open(os.path.join(merged, "config.json")))
  assert sorted(gen_cfg.eos_token_id) == sorted(hf_cfg["eos_token_id"]) == stop_ids(tok)
  assert tok.convert_tokens_to_ids("<|eot_id|>") in gen_cfg.eos_token_id and max(gen_cfg.eos_token_id) < 4096
  assert gen_cfg.bos_token_id == hf_cfg["bos_token_id"] == tok.bos_token_id
  assert gen_cfg.pad_token_id == hf_cfg["pad_token_id"] == tok.pad_token_id

  # A user's directory that already holds an export (and a file of theirs): refused, nothing deleted;
  # --overwrite replaces the export.
  mine = tmp_path / "mine"
  (mine / "merged").mkdir(parents=True)
  (mine / "merged" / "notes.txt").write_text("keep me")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  refused = subprocess.run([sys.executable, "-m", "hinqa_jax", "export", *common, f"--hf_dir={mine}"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=600)
  assert refused.returncode != 0 and "already hold files" in refused.stderr and "--overwrite" in refused.stderr
  assert (mine / "merged" / "notes.txt").read_text() == "keep me" and not (mine / "peft").exists()
  _cli("export", *common, f"--hf_dir={mine}", "--overwrite")
  assert (mine / "merged" / "config.json").exists() and (mine / "peft" / "adapter_config.json").exists()


def test_typo_in_override_is_an_error(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-m", "hinqa_jax", "train", "--config=configs/tiny.py",
                        f"--workdir={tmp_path}", "--config.train.num_stepz=3"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "num_stepz" in out.stderr


def test_bad_config_values_stop_before_any_work(tmp_path):
  """batch_size=0 used to train 20 steps of nothing, num_steps=-3 blamed a checkpoint that did not exist, and
  float64 ran as float32: each is now named, all at once, before anything is compiled or written."""
  w = tmp_path / "w"
  out = subprocess.run([sys.executable, "-m", "hinqa_jax", "train", "--config=configs/tiny.py", f"--workdir={w}",
                        "--config.train.batch_size=0", "--config.train.num_steps=-3", "--config.model.dtype=float64"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode != 0
  for part in ("--config.train.batch_size=0 must be >= 1", "--config.train.num_steps=-3 must be >= 1",
               "--config.model.dtype='float64' must be float32 or bfloat16"):
    assert part in out.stderr, out.stderr[-2000:]
  assert not w.exists()


def _quick(*args):
  return subprocess.run([sys.executable, "-m", "hinqa_jax", *args], cwd=REPO, capture_output=True, text=True,
                        timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _declared_comment(key: str) -> str:
  """The trailing comment of `c.<key> = ...` in hinqa_jax/config.py's source, read here independently."""
  import re
  source = open(os.path.join(REPO, "hinqa_jax", "config.py"), encoding="utf-8").read()
  return re.search(rf"^\s*c\.{re.escape(key)} = .*?#\s*(.+)$", source, re.M).group(1).strip()


@pytest.mark.parametrize("command,reads,not_reads", [
    ("run", ("train.num_steps", "eval.bertscore_model", "run.ratios", "data.root"), ()),
    ("train", ("train.num_steps", "lora.rank", "data.root"), ("eval.", "run.")),
    ("evaluate", ("eval.bertscore_model", "data.test2"), ("train.", "run.")),
    ("export", ("model.hf_path", "tokenizer.path"), ("eval.", "train.")),
    ("prepare", ("data.seq_len", "tokenizer.path"), ("lora.", "eval.")),
    ("convert", ("model.param_dtype",), ("data.", "eval.")),
    ("plan", ("train.batch_size", "eval.max_new_tokens", "mesh.fsdp"), ("run.", "checkpoint.")),
])
def test_each_command_help_lists_the_config_keys_it_reads(command, reads, not_reads):
  out = _quick(command, "--help", "--config=configs/vatika_llama3_8b_all.py")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith(f"python -m hinqa_jax {command} ")
  from hinqa_jax import config as config_lib
  c = config_lib.load(os.path.join(REPO, "configs", "vatika_llama3_8b_all.py"))
  for key in reads:  # the value the config file sets, then the comment that declares the key
    section, leaf = key.split(".")
    assert f"  --config.{key}={c[section][leaf]!r}\n" in out.stdout, key
    comment = "directory of the VATIKA files" if key == "data.root" else _declared_comment(key)
    assert comment in out.stdout.split(f"--config.{key}=", 1)[1].split("\n")[1], key
  assert not [line for line in out.stdout.splitlines() if any(f"--config.{p}" in line for p in not_reads)]


@pytest.mark.parametrize("args,message", [
    (("plan", "--config=configs/tiny.py", "--target=cpu-1", "--config.device_memory=16"),
     "--config.device_memory: no such config key"),
    (("plan", "--config=configs/tiny.py", "--target=cpu-1", "--device_memory=16"), "Unknown command line flag"),
    (("train", "--config=configs/nope.py", "--workdir=/tmp/x"), "--config=configs/nope.py: no such file"),
    (("train", "--config=configs/tiny.py", "--workdir=/tmp/x", "--config.train.batch_size=abc"), "batch_size=abc"),
    (("plan", "--config=configs/tiny.py"), "plan needs --target=NAME"),
    (("evaluate", "--config=configs/tiny.py"), "--workdir is required"),
])
def test_bad_flags_are_one_line_errors_before_any_work(args, message):
  out = _quick(*args)
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr[-2000:]


def test_a_bertscore_layer_the_model_lacks_is_refused_before_any_work(tmp_path):
  from helpers import tiny_bert
  bert = tiny_bert(tmp_path / "bert")  # 2 layers; the default layer is 9 (mBERT's best for Hindi)
  out = _quick("run", "--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}", f"--config.eval.bertscore_model={bert}")
  assert out.returncode == 2 and "--config.eval.bertscore_layer=9 must be <= 2" in out.stderr, out.stderr[-2000:]
  assert not (tmp_path / "w").exists()


def test_gen_commands_explain_themselves_and_fail_in_one_line():
  def gen(*args):
    return subprocess.run([sys.executable, "-m", "gen", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
  out = gen("synthesize", "--help", "--config=configs/gen/llama70b_phi4_vllm.py")
  assert out.returncode == 0 and out.stdout.startswith("python -m gen synthesize "), out.stderr[-2000:]
  assert "  --shard: " in out.stdout and "--config.curate." not in out.stdout  # synthesize's own keys only
  # a teacher's key, declared inside gen.teacher(); the shared VATIKA root, declared in hinqa_jax.config
  assert "  --config.teachers.phi4.model='/models/phi-4'\n      local checkpoint dir" in out.stdout
  assert "  --config.data.root='/data/vatika'\n      directory of the VATIKA files" in out.stdout
  out = gen("curate", "--help")
  assert out.returncode == 0 and "--config.curate.grounding_threshold=0.5" in out.stdout and "--shard" not in out.stdout
  for args, message in ((("curate", "--config=configs/gen/llama70b_phi4_vllm.py", "--config.curate.nope=1"),
                         "--config.curate.nope: no such config key"),
                        (("synthesize", "--config=configs/gen/llama70b_phi4_vllm.py", "--dry-run"),
                         "--dry-run applies to curate only")):
    out = gen(*args)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr[-2000:]

"""The pipeline as real processes (launch/local.sh: N processes joined by jax.distributed over gloo, on CPU).

One `run` of configs/demo.py on 2 processes x 2 devices, with the (data, fsdp, tensor) = (1, 4, 1) mesh, so
every weight and adapter of every stage (the pretrained base too) is split over both processes: it
completes, scores every experiment on every split and exports a model transformers and PEFT load. Then
a stage is evaluated again on 1 process x 1 device and on 2 processes x 2 devices with a data-parallel
mesh (same greedy strings), exported again on 1 device (the same bytes), and bad input fails before any
work. The subprocesses share one persistent XLA compilation cache: identical programs (M1, M2 and M3
compile the same step) are compiled once.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM

from helpers import hf_logits
from hinqa_jax import config as config_lib, evaluate, lora, pipeline, train
from hinqa_jax.records import read_records
from processes import finish

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS, SPLITS = ("m1", "m2", "m3"), ("val", "test1", "test2")
N_EVAL = 16  # records scored per split


def _overrides(synthetic: Path) -> list[str]:
  """configs/demo.py cut to seconds: the tiny model, two steps of each stage, given synthetic data (no teachers)."""
  return ["--config=configs/demo.py", "--config.model.preset=tiny", "--config.data.seq_len=256",
          "--config.pretrain.steps=2", "--config.pretrain.batch_size=8", "--config.synthetic.source=files",
          f"--config.data.synthetic=('{synthetic}',)", "--config.train.num_steps=2", "--config.run.stage2_steps=1",
          "--config.checkpoint.every_steps=2", "--config.train.warmup_steps=1", f"--config.eval.max_examples={N_EVAL}",
          "--config.eval.max_new_tokens=8"]


def _mesh(data_: int, fsdp: int) -> list[str]:
  return [f"--config.mesh.data={data_}", f"--config.mesh.fsdp={fsdp}", "--config.mesh.tensor=1"]


def _env(devices: int, log_dir: Path) -> dict:
  return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DEFAULT_MATMUL_PRECISION": "highest", "HINQA_LOG_DIR": str(log_dir),
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "HINQA_LOCAL_DEVICES": str(devices),
          "JAX_COMPILATION_CACHE_DIR": str(log_dir / "xla-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}


def _processes(n: int, devices: int, log_dir: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
  """`python -m hinqa_jax ARGS` on 1 process, or through launch/local.sh on n, each with `devices` CPU devices."""
  cmd = [sys.executable, "-m", "hinqa_jax", *args] if n == 1 else [str(REPO / "launch" / "local.sh"), str(n), *args]
  env = _env(devices, log_dir)
  if n > 1:
    env["XLA_FLAGS"] = ""  # local.sh sets the device count from HINQA_LOCAL_DEVICES
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  logs = "".join((log_dir / f"hinqa-proc-{i}.log").read_text()[-3000:] for i in range(1, n))
  assert (out.returncode == 0) == ok, out.stdout[-3000:] + out.stderr[-3000:] + logs
  return out


def _predictions(eval_dir: Path) -> dict[str, list[str]]:
  return {s: [json.loads(line)["prediction"] for line in (eval_dir / f"{s}.predictions.jsonl").read_text().splitlines()]
          for s in SPLITS}


def _synthetic_file(path: Path) -> Path:
  """Curated-format synthetic records (as gen/curate writes them), from the training contexts."""
  recs = read_records(REPO / "data" / "vatika_mini" / "train.json")[:24]
  path.write_text("".join(json.dumps({"id": f"syn-{i}", "domain": r.domain, "context": r.context,
                                      "question": r.question.replace("?", " बताइए?"), "answer": r.answer,
                                      "source": "teacher_a"}, ensure_ascii=False) + "\n"
                          for i, r in enumerate(recs)), encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
  """`launch/local.sh 2 run` on 2 x 2 devices with fsdp over all 4; the run's predictions kept aside."""
  d = tmp_path_factory.mktemp("mp")
  over = _overrides(_synthetic_file(d / "synthetic.jsonl"))
  w = d / "w"
  (d / "logs").mkdir()
  out = _processes(2, 2, d / "logs", "run", f"--workdir={w}", *over, *_mesh(1, 4))
  preds = {exp: _predictions(w / "eval" / exp) for exp in EXPERIMENTS}
  return {"dir": d, "w": w, "over": over, "stdout": out.stdout, "preds": preds}


def test_run_on_two_processes_scores_every_experiment_and_split(two_process_run):
  w = two_process_run["w"]
  res = json.loads((w / "results.json").read_text())["results"]
  md = (w / "results.md").read_text()
  assert set(res) == set(EXPERIMENTS)
  for split in SPLITS:
    assert f"## {split}" in md
    for exp in EXPERIMENTS:
      assert res[exp][split]["n"] == N_EVAL and 0 <= res[exp][split]["bleu2"] <= 100
      assert f"| {exp} | {N_EVAL} |" in md
      assert len(two_process_run["preds"][exp][split]) == N_EVAL
  # Process 0 alone wrote: no temp file of any process is left anywhere in the workdir.
  assert not [p for p in w.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".hinqa-shared-")]
  # The run logged every step of each stage once (process 0's writer alone).
  steps = [json.loads(x)["step"] for x in (w / "m1" / "metrics.jsonl").read_text().splitlines()]
  assert steps == [1, 2]


def test_export_of_two_processes_loads_in_transformers_and_peft(two_process_run):
  from peft import PeftModel
  w = two_process_run["w"]
  merged = AutoModelForCausalLM.from_pretrained(w / "export" / "m2" / "merged", dtype=torch.float32).eval()
  base = AutoModelForCausalLM.from_pretrained(w / "base" / "hf", dtype=torch.float32).eval()
  peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(w / "base" / "hf", dtype=torch.float32),
                                         w / "export" / "m2" / "peft").eval()
  tokens = np.random.RandomState(0).randint(0, merged.config.vocab_size, (2, 24))
  ours = hf_logits(merged, tokens)
  np.testing.assert_allclose(hf_logits(peft_model, tokens), ours, atol=1e-4, rtol=0)
  assert np.abs(ours - hf_logits(base, tokens)).max() > 1e-4  # the adapters changed the model


def _agreement(a: dict[str, list[str]], b: dict[str, list[str]]) -> float:
  pairs = [(x, y) for s in SPLITS for x, y in zip(a[s], b[s], strict=True)]
  return sum(x == y for x, y in pairs) / len(pairs)


@pytest.mark.parametrize("processes,devices,mesh", [(1, 1, (1, 1)), (2, 2, (-1, 1))],
                         ids=["1x1", "2x2-data-parallel"])
def test_a_stage_evaluated_again_gives_the_same_greedy_strings(two_process_run, processes, devices, mesh):
  """M2 (M1 then M2, trained with weights split over 2 processes) restored onto 1 device, or onto 4 devices
  of 2 processes with replicated weights and rows split over all 4: the same answers (float32)."""
  run = two_process_run
  _processes(processes, devices, run["dir"] / "logs", "evaluate", "--stage=m2", f"--workdir={run['w']}",
             *run["over"], *_mesh(*mesh))
  again = _predictions(run["w"] / "eval" / "m2")
  assert len({p for s in SPLITS for p in again[s]}) > 5  # answers differ between questions: a real comparison
  assert _agreement(run["preds"]["m2"], again) >= 0.95, (run["preds"]["m2"], again)


def test_export_on_one_device_equals_export_on_two_processes(two_process_run):
  run = two_process_run
  out = run["dir"] / "export-1x1"
  _processes(1, 1, run["dir"] / "logs", "export", "--stage=m2", f"--workdir={run['w']}", f"--hf_dir={out}", *run["over"],
             *_mesh(1, 1))
  for part, fname in (("merged", "model.safetensors"), ("peft", "adapter_model.safetensors")):
    one, two = load_file(out / part / fname), load_file(run["w"] / "export" / "m2" / part / fname)
    assert set(one) == set(two)
    for name in one:
      np.testing.assert_array_equal(one[name], two[name], err_msg=f"{part}/{name}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_convert_on_two_processes_reads_shards_and_writes_the_source(two_process_run, tmp_path, dtype):
  """`convert` with the base split over both processes (fsdp 4), read as training reads it (each process
  its slices: test_multiprocess_hf.py measures that read's memory): the tensors written are the source's,
  cast to param_dtype."""
  import ml_dtypes
  run = two_process_run
  src = run["w"] / "base" / "hf"
  (tmp_path / "logs").mkdir()
  _processes(2, 2, tmp_path / "logs", "convert", f"--workdir={tmp_path / 'w'}", f"--hf_dir={src}", *run["over"],
             *_mesh(1, 4), f"--config.model.param_dtype={dtype}")
  want, got = load_file(src / "model.safetensors"), load_file(tmp_path / "w" / "converted" / "model.safetensors")
  assert set(got) == set(want) and len(got) > 5
  for name in want:
    np.testing.assert_array_equal(got[name], want[name].astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32),
                                  err_msg=name)


def _demo_config():
  return config_lib.load(REPO / "configs" / "demo.py", **{"model.preset": "tiny", "data.seq_len": 256, "pretrain.steps": 2,
                                              "synthetic.source": "files", "mesh.data": -1})


def test_bad_input_fails_before_any_work(two_process_run, tmp_path):
  """Another model, another rank, arrays that do not match their metadata, a mesh that does not fit, a
  stage that is not there or not LoRA: each a clear error naming what is wrong, before the base is read."""
  import shutil
  c, w = _demo_config(), two_process_run["w"]
  cfg = train.model_config(pipeline._made_here(c, w), 4096)
  small = pipeline._with(c, **{"pretrain.steps": 0, "model.preset": "demo"})
  with pytest.raises(ValueError, match=r"m2/checkpoints: model \{.*'dim': 64.*\} does not match this run's \{.*'dim': 128"):
    pipeline.evaluate(small, w, "m2")
  with pytest.raises(ValueError, match=r"m2/checkpoints: lora \{.*'rank': 8.*\} does not match this run's \{.*'rank': 4"):
    evaluate.load_adapters(w / "m2", cfg, lcfg=lora.LoraConfig(rank=4, alpha=16.0))
  shutil.copytree(w / "m2" / "checkpoints", tmp_path / "m2x" / "checkpoints")
  for meta in (tmp_path / "m2x" / "checkpoints").glob("*/meta/metadata"):  # metadata says rank 4, arrays are rank 8
    meta.write_text(meta.read_text().replace('"rank": 8', '"rank": 4'))
  with pytest.raises(ValueError, match=r"trainable/layers/mlp/down_proj/a has shape \(2, 192, 8\), expected \(2, 192, 4\)"):
    evaluate.load_adapters(tmp_path / "m2x", cfg)
  with pytest.raises(ValueError, match=r"config.mesh does not fit this job's 8 device\(s\).*needs 3 devices"):
    pipeline.evaluate(pipeline._with(c, **{"mesh.data": 3}), w, "m2")
  with pytest.raises(FileNotFoundError, match="stage m9: no checkpoints at"):
    pipeline.export(c, w, "m9")
  with pytest.raises(ValueError, match="a full training stage, not LoRA adapters"):
    evaluate.load_adapters(w / "base", cfg)


def test_a_workdir_not_shared_by_all_processes_fails_before_any_work(tmp_path):
  """Two processes given different workdirs (as hosts without a shared filesystem would see one path)."""
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  procs = []
  for i in (0, 1):
    env = {**_env(1, tmp_path), "HINQA_COORDINATOR": f"127.0.0.1:{port}", "HINQA_NUM_PROCESSES": "2",
           "HINQA_PROCESS_ID": str(i)}
    procs.append(subprocess.Popen([sys.executable, "-m", "hinqa_jax", "train", "--config=configs/tiny.py",
                                   f"--workdir={tmp_path / f'w{i}'}"], cwd=REPO, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  for p, (out, _) in zip(procs, finish(procs, 300, "two processes")):
    assert p.returncode != 0, out[-3000:]
    assert f"workdir {tmp_path / 'w'}" in out and "is not shared by all processes: process(es) [1] of 2 cannot see" \
        in out, out[-3000:]
  assert os.listdir(tmp_path / "w0") == []  # nothing prepared or trained; the probe file is gone
  assert not (tmp_path / "w1").exists()

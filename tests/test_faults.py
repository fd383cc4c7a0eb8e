"""What pods and shared filesystems do to a run: a full disk, SIGTERM while blocked, a damaged checkpoint,
a second writer, an error or a different path on one process of several, preemption of one host.
Each test reproduces the fault for real (/dev/full for ENOSPC, truncated and edited Orbax files, live
and dead pids, several processes joined by jax.distributed over gloo)."""
import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from hinqa_jax import checkpoint, locks, sharding, stages, tracking, train
from hinqa_jax.tracking import read_metrics
from processes import finish, reaped
from train_utils import ToyPacked, toy_config

REPO = Path(__file__).resolve().parents[1]


def _one_device():
  return sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])


# ----------------------------------------------------------------------------- a full disk, SIGTERM while blocked
def test_a_full_disk_under_tensorboard_is_an_error_not_a_hang(tmp_path, monkeypatch):
  """ENOSPC from the OS (/dev/full) while writing TensorBoard events after the step-2 checkpoint: an OSError
  naming the stage at that step (a background writer thread used to die and block the loop), the step-2
  checkpoint whole on disk, and a run after the disk is freed resumes from it to the end."""
  real = tracking.MetricsWriter

  class FillsUpAfterStep2(real):
    def write(self, step, metrics, prefix="train"):
      if step > 2:  # every flush from here on: ENOSPC
        self._tb._py_recordio_writer._writer = open("/dev/full", "wb")  # noqa: SIM115
      return super().write(step, metrics, prefix)
  monkeypatch.setattr(train, "MetricsWriter", FillsUpAfterStep2)
  c = toy_config(steps=6, every=2)
  faulthandler.dump_traceback_later(300, exit=True)  # a hang fails this test (and its worker) with a traceback
  try:
    with pytest.raises(OSError, match=r"cannot write the metrics of step 3 to .*/s \(.*No space left on device"):
      train.run_stage(c, tmp_path, "s", ToyPacked(), mesh=_one_device(), progress=False)
  finally:
    faulthandler.cancel_dump_traceback_later()
  assert checkpoint.manager(tmp_path / "s" / "checkpoints").latest_step() == 2
  monkeypatch.setattr(train, "MetricsWriter", real)
  out = train.run_stage(c, tmp_path, "s", ToyPacked(), mesh=_one_device(), progress=False)
  assert out["final"]["step"] == 6 and [m["step"] for m in read_metrics(tmp_path / "s")] == [1, 2, 3, 4, 5, 6]
  w = real(tmp_path / "x")
  w.path = Path("/dev/full")  # metrics.jsonl on a full disk: the same error
  with pytest.raises(OSError, match="cannot write the metrics of step 7"):
    w.write(7, {"loss": 1.0})


def test_sigterm_is_honoured_while_the_loop_is_blocked(tmp_path):
  """The loop blocks (a hung read) after SIGTERM: the process still exits 143 once the grace has passed."""
  script = f"""
import sys, time; sys.path.insert(0, {str(REPO / 'tests')!r})
from pathlib import Path
from hinqa_jax import train
from train_utils import ToyPacked, toy_config
class Hung(ToyPacked):
  def get_batch(self, step, *a, **k):
    if step == 2:
      Path({str(tmp_path / 'blocked')!r}).touch()
      time.sleep(3600)
    return super().get_batch(step, *a, **k)
c = toy_config(steps=5)
c.checkpoint.preempt_grace_s = 2.0
train.run_stage(c, {str(tmp_path)!r}, "s", Hung(), progress=False)
"""
  proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  deadline = time.time() + 300
  with reaped([proc]):
    while not (tmp_path / "blocked").exists():
      assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
      time.sleep(0.2)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = finish([proc], 60, "the blocked loop")[0]
  assert proc.returncode == 143, err[-2000:]
  assert time.time() - sent < 30
  assert "no step boundary within 2 s" in err


# ----------------------------------------------------------------------------- damaged checkpoints
def _damage_truncate(step_dir: Path):
  biggest = max((f for f in (step_dir / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
  biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])


def _damage_metadata(step_dir: Path):
  (step_dir / "_CHECKPOINT_METADATA").unlink()
  for f in (step_dir / "state").rglob("_METADATA"):
    f.unlink()


def _damage_flip(step_dir: Path):
  biggest = max((f for f in (step_dir / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
  raw = bytearray(biggest.read_bytes())
  raw[len(raw) // 2] ^= 0x10
  biggest.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  d = tmp_path_factory.mktemp("straight")
  out = train.run_stage(toy_config(steps=8, every=2), d, "s", ToyPacked(), mesh=_one_device(), progress=False)
  return jax.device_get(out["state"]["trainable"]), read_metrics(d / "s")


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_metadata, _damage_flip])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, straight_run, damage, caplog):
  c = toy_config(steps=8, every=2)
  c.checkpoint.keep = 3
  train.run_stage(c, tmp_path, "s", ToyPacked(), mesh=_one_device(), progress=False)
  damage(tmp_path / "s" / "checkpoints" / "8")
  with caplog.at_level("WARNING"):
    out = train.run_stage(c, tmp_path, "s", ToyPacked(), mesh=_one_device(), progress=False)
  assert "checkpoint step 8 in" in caplog.text and "is damaged" in caplog.text and "using step 6" in caplog.text
  assert [p.name.split("-")[:2] for p in (tmp_path / "s" / "checkpoints").glob("damaged-*")] == [["damaged", "step8"]]
  want, metrics = straight_run  # steps 7 and 8 again from step 6: the uninterrupted run's values exactly
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(out["state"]["trainable"]), want)
  assert [m["loss"] for m in read_metrics(tmp_path / "s")] == [m["loss"] for m in metrics]


def test_fingerprint_sees_one_bit_and_not_the_sharding():
  x = np.random.RandomState(0).randn(8, 16).astype(np.float32)
  state = {"trainable": {"w": jax.numpy.asarray(x)}, "step": jax.numpy.int32(3)}
  base = checkpoint.fingerprint(state)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  spread = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", "fsdp")))
  assert checkpoint.fingerprint({"trainable": {"w": spread}, "step": jax.numpy.int32(3)}) == base
  flipped = x.copy()
  flipped.view(np.uint32)[5, 7] ^= 1  # the lowest mantissa bit of one value
  assert checkpoint.fingerprint({"trainable": {"w": jax.numpy.asarray(flipped)}, "step": 3})["trainable"] != \
      base["trainable"]
  swapped = x.copy()
  swapped[0, [0, 1]] = swapped[0, [1, 0]]  # the same words in another order
  assert checkpoint.fingerprint({"trainable": {"w": jax.numpy.asarray(swapped)}})["trainable"] != base["trainable"]


# ----------------------------------------------------------------------------- one writer per directory
def _held_by(directory: Path, pid: int, host: str | None = None, what="train s", name=".lock"):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / name).write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "what": what,
                                            "since": time.time()}))


def test_a_second_writer_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, caplog):
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    _held_by(tmp_path / "s", other.pid)
    with pytest.raises(RuntimeError, match=rf"s is being written by train s \(host {socket.gethostname()}, pid "
                                           rf"{other.pid}, since .*\): a second writer is refused"):
      train.run_stage(toy_config(steps=2), tmp_path, "s", ToyPacked(), mesh=_one_device(), progress=False)
    assert not (tmp_path / "s" / "metrics.jsonl").exists()  # nothing written beside the holder
    _held_by(tmp_path / "s", other.pid, host="another-node")  # another host, fresh heartbeat: refused too
    with pytest.raises(RuntimeError, match="host another-node"):
      train.run_stage(toy_config(steps=2), tmp_path, "s", ToyPacked(), mesh=_one_device(), progress=False)
    old = time.time() - locks.STALE_S - 5  # ... until its heartbeat is older than STALE_S
    os.utime(tmp_path / "s" / ".lock", (old, old))
    with caplog.at_level("WARNING"), locks.hold(tmp_path / "s", "probe"):
      assert json.loads((tmp_path / "s" / ".lock").read_text())["pid"] == os.getpid()  # taken over
    assert "not refreshed for" in caplog.text
  finally:
    other.kill()
    other.wait()
  _held_by(tmp_path / "s", other.pid)  # the same host, a pid that is gone: taken over with a warning
  with caplog.at_level("WARNING"):
    train.run_stage(toy_config(steps=2), tmp_path, "s", ToyPacked(), mesh=_one_device(), progress=False)
  assert f"pid {other.pid} is gone" in caplog.text
  assert not (tmp_path / "s" / ".lock").exists()  # released at the end
  assert [m["step"] for m in read_metrics(tmp_path / "s")] == [1, 2]


def test_gen_synthesize_refuses_a_second_writer_of_its_shard(tmp_path):
  import gen
  cfg = gen.default_config()
  cfg.out_dir = str(tmp_path / "gen")
  cfg.teachers["t"] = gen.teacher("openai", "m", base_url="http://127.0.0.1:9")
  records = [{"id": "c1", "context": "ताजमहल आगरा में है।", "question": "ताजमहल कहाँ है?", "answer": "आगरा में।"}]
  _held_by(tmp_path / "gen", os.getppid(), what="gen synthesize shard 0/1")
  with pytest.raises(RuntimeError, match=r"gen is being written by gen synthesize shard 0/1"):
    gen.synthesize(cfg, records=records)
  assert not list((tmp_path / "gen").glob("*.jsonl"))


# ----------------------------------------------------------------------------- keys and random streams
def test_weights_are_keyed_on_every_shard_and_the_index(tmp_path):
  d = tmp_path / "base"
  d.mkdir()
  for name, text in [("config.json", "{}"), ("model-00001-of-00002.safetensors", "a"),
                     ("model-00002-of-00002.safetensors", "b"), ("model.safetensors.index.json", "{}")]:
    (d / name).write_text(text)
  first = stages.weights_digest(d)
  seen = {first}
  for name, text in [("model-00002-of-00002.safetensors", "cc"), ("model.safetensors.index.json", "{ }"),
                     ("config.json", '{"a": 1}')]:  # every file of the base changes the key
    (d / name).write_text(text)
    seen.add(stages.weights_digest(d))
  assert len(seen) == 4
  for name, text in [("model.safetensors.index.json", "{}"), ("config.json", "{}")]:
    (d / name).write_text(text)
  (d / "model-00002-of-00002.safetensors").write_text("b")
  os.utime(d / "model-00002-of-00002.safetensors", ns=(1, 1))
  assert stages.weights_digest(d) == first
  with pytest.raises(FileNotFoundError, match="no config.json or"):
    stages.weights_digest(tmp_path)


def test_random_streams_are_distinct_per_stage_and_purpose():
  seen = {}
  for stage in ("m1", "m2_stage2", "m3"):
    for purpose in ("lora_init", "dropout"):
      key = train.rng_stream(0, stage, purpose)
      keys = [key] if purpose == "lora_init" else [jax.random.fold_in(key, n) for n in range(50)]
      for k in keys:
        seen.setdefault(tuple(np.asarray(jax.random.key_data(k)).tolist()), []).append((stage, purpose))
  assert all(len(v) == 1 for v in seen.values()), [v for v in seen.values() if len(v) > 1]


# ----------------------------------------------------------------------------- several processes
def _two_processes(scenario: str, workdir: Path, sigterm_to_1_after: str | None = None, timeout=240):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = []
  for i in range(2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "HINQA_COORDINATOR": f"127.0.0.1:{port}",
           "HINQA_NUM_PROCESSES": "2", "HINQA_PROCESS_ID": str(i)}
    procs.append(subprocess.Popen([sys.executable, str(REPO / "tests" / "multihost_worker.py"), scenario,
                                   str(workdir)], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
  start = time.time()
  with reaped(procs):
    if sigterm_to_1_after:
      while not (workdir / sigterm_to_1_after).exists():
        if any(p.poll() is not None for p in procs) or time.time() - start > timeout:
          errs = [e for _, e in finish(procs, 1, scenario)]  # AssertionError with their output if they hang
          raise AssertionError(f"{scenario}: never reached {sigterm_to_1_after}\n" + "\n".join(e[-2000:] for e in errs))
        time.sleep(0.2)
      procs[1].send_signal(signal.SIGTERM)
      start = time.time()
    errs = [e for _, e in finish(procs, timeout, scenario)]
  return [p.returncode for p in procs], errs, time.time() - start


def test_an_error_on_one_process_stops_every_process_within_seconds(tmp_path):
  codes, errs, took = _two_processes("raise", tmp_path)
  assert codes == [1, 1], errs
  assert "ValueError: a bad record in process 1's rows" in errs[1]
  assert "process 1 failed, so process 0 stops too: ValueError: a bad record in process 1's rows" in errs[0]
  assert took < 60  # startup included; the barrier it waited at would have waited 3 hours


def test_processes_on_different_paths_fail_naming_both(tmp_path):
  codes, errs, _ = _two_processes("skip", tmp_path)
  assert codes == [1, 1], errs
  assert "process 1 is at 'done m1' but process 0 at 'begin m1'" in errs[1]
  assert "process 1 failed, so process 0 stops too" in errs[0]


def test_sigterm_on_one_host_saves_the_same_step_on_every_host(tmp_path):
  codes, errs, took = _two_processes("preempt", tmp_path, sigterm_to_1_after="at-step-3.1")
  assert codes == [143, 143], errs
  saved = [int(e.split("checkpoint saved at step ")[1].split(",")[0]) for e in errs]
  assert saved[0] == saved[1] > 3, errs
  assert checkpoint.manager(tmp_path / "s" / "checkpoints").latest_step() == saved[0]
  assert took < 60

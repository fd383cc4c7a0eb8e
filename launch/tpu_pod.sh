#!/usr/bin/env bash
# One `python -m hinqa_jax ...` process on every worker (host) of a Cloud TPU VM pod slice.
#
#   TPU_NAME=hinqa ZONE=us-central2-b ACCELERATOR=v4-32 TPU_VERSION=tpu-ubuntu2204-base \
#   BUCKET=gs://my-bucket/hinqa \
#     launch/tpu_pod.sh --create train --config=configs/tiny.py --workdir=/mnt/hinqa/runs/m1 \
#       --config.model.hf_path=/mnt/hinqa/Llama-3.1-8B --config.mesh.data=1 --config.mesh.fsdp=-1
#   launch/tpu_pod.sh --no-setup evaluate --config=... --workdir=/mnt/hinqa/runs/m1   # pod already set up
#   HINQA="launch/tpu_pod.sh --no-setup" WORK=/mnt/hinqa/runs/vatika_8b VATIKA=/mnt/hinqa/vatika \
#     MODELS=/mnt/hinqa/models launch/recipe.sh run      # the real experiment's run (launch/recipe.sh)
#   gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE"                      # when done
#
# Steps: (1) with --create, create the pod slice; (2) copy this checkout to every worker (a tarball
# of the working tree, or `git clone $REPO_URL` when set); (3) unless --no-setup, make a venv on each
# worker with requirements.txt minus its CPU jax lines plus jax[tpu] of the same version, and mount
# $BUCKET there with gcsfuse; (4) run the command on all workers at once.
# Every worker must see the same --workdir: the BUCKET mount (MOUNT, default /mnt/hinqa) or an NFS path.
# The bucket is mounted for what the run does there: Orbax and the stage writers rename directories
# (--rename-dir-limit; on a flat bucket gcsfuse renames a directory object by object, not atomically, so
# a hierarchical-namespace bucket is better), and process 0 writes files that the other hosts then read
# (no metadata cache, so no host sees a stale or missing file for up to a minute).
# The processes join through jax.distributed: the coordinator is worker 0, the process id each
# worker's agent-worker-number (read from the metadata server), passed as HINQA_* (distributed.py).
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch/tpu_pod.sh [--create] [--no-setup] COMMAND [--config=... --workdir=... flags]
environment:
  TPU_NAME      pod slice name (required)
  ZONE          its zone (required)
  PROJECT       GCP project (default: gcloud's)
  ACCELERATOR   with --create: accelerator type, e.g. v4-32, v5litepod-16, v5p-32
  TPU_VERSION   with --create: runtime image, e.g. tpu-ubuntu2204-base, v2-alpha-tpuv5-lite, v2-alpha-tpuv5
  SPOT=1        with --create: a Spot (preemptible) slice; training resumes from its checkpoints
  REPO_URL      git URL to clone on the workers instead of copying this working tree (REPO_REF: branch/tag)
  REMOTE_DIR    checkout directory on each worker (default: hinqa-jax, under the home directory)
  PYTHON        interpreter for the venv on the workers, Python >= 3.11 (default: python3)
  BUCKET        gs://bucket[/prefix] to mount with gcsfuse at MOUNT (default /mnt/hinqa) on every worker
  RENAME_DIR_LIMIT  gcsfuse --rename-dir-limit: most files in a renamed directory (default 200000)
  DETACH=1      run in the background on the workers (log: ~/hinqa-run.log); default: stream the output
EOF
  exit 2
}

create=0
setup=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --create) create=1; shift ;;
    --no-setup) setup=0; shift ;;
    -h | --help) usage ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || usage
if [[ -z "${TPU_NAME:-}" || -z "${ZONE:-}" ]]; then
  echo "error: TPU_NAME and ZONE must be set" >&2
  usage
fi

repo="$(cd "$(dirname "$0")/.." && pwd)"
remote_dir="${REMOTE_DIR:-hinqa-jax}"
mount_point="${MOUNT:-/mnt/hinqa}"
common=(--zone "${ZONE}")
if [[ -n "${PROJECT:-}" ]]; then
  common+=(--project "${PROJECT}")
fi

ssh_all() {  # run one bash script on every worker at once
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" "${common[@]}" --worker=all --command "bash -c $(printf '%q' "$1")"
}

# ----------------------------------------------------------------------------- 1. the slice
if [[ ${create} -eq 1 ]]; then
  if [[ -z "${ACCELERATOR:-}" || -z "${TPU_VERSION:-}" ]]; then
    echo "error: --create needs ACCELERATOR and TPU_VERSION" >&2
    usage
  fi
  create_flags=(--accelerator-type "${ACCELERATOR}" --version "${TPU_VERSION}")
  if [[ "${SPOT:-0}" == 1 ]]; then
    create_flags+=(--spot)
  fi
  gcloud compute tpus tpu-vm create "${TPU_NAME}" "${common[@]}" "${create_flags[@]}"
fi

# ----------------------------------------------------------------------------- 2. the code
q_dir="$(printf '%q' "${remote_dir}")"
if [[ -n "${REPO_URL:-}" ]]; then
  ref="${REPO_REF:-main}"
  ssh_all "set -euo pipefail
    if [ -d ${q_dir}/.git ]; then
      git -C ${q_dir} fetch --depth 1 origin $(printf '%q' "${ref}") && git -C ${q_dir} checkout -f FETCH_HEAD
    else
      git clone --depth 1 --branch $(printf '%q' "${ref}") $(printf '%q' "${REPO_URL}") ${q_dir}
    fi"
else
  tarball="$(mktemp -t hinqa-XXXXXX.tar.gz)"
  trap 'rm -f "${tarball}"' EXIT
  tar -C "${repo}" --exclude=./.venv --exclude=./.venv-tpu --exclude=./runs --exclude=./.git \
    --exclude='__pycache__' -czf "${tarball}" .
  gcloud compute tpus tpu-vm scp "${tarball}" "${TPU_NAME}:hinqa-code.tar.gz" "${common[@]}" --worker=all
  ssh_all "set -euo pipefail; mkdir -p ${q_dir} && tar -xzf ~/hinqa-code.tar.gz -C ${q_dir}"
fi

# ----------------------------------------------------------------------------- 3. the environment
if [[ ${setup} -eq 1 ]]; then
  # requirements.txt is the CPU stack (jax[cpu], the CPU torch used by tests and bert-score); on TPU
  # the same jax version comes as jax[tpu] with libtpu, everything else as pinned.
  ssh_all "set -euo pipefail; cd ${q_dir}
    py=$(printf '%q' "${PYTHON:-python3}")
    \"\${py}\" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
      echo \"\$(hostname): \${py} is older than 3.11; install python3.11 (deadsnakes) and set PYTHON\" >&2; exit 1; }
    [ -x .venv-tpu/bin/python ] || \"\${py}\" -m venv .venv-tpu
    . .venv-tpu/bin/activate
    pip install --quiet --upgrade pip
    jax_version=\$(sed -n 's/^jax\\[cpu\\]==//p' requirements.txt)
    grep -v -E '^(jax\\[cpu\\]|jaxlib)==' requirements.txt > requirements-tpu.txt
    pip install --quiet -r requirements-tpu.txt
    pip install --quiet \"jax[tpu]==\${jax_version}\" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
    python -c 'import jax; print(jax.__version__, jax.local_devices())'"
  if [[ -n "${BUCKET:-}" ]]; then
    bucket="${BUCKET#gs://}"
    gcsfuse_flags="--implicit-dirs --rename-dir-limit=${RENAME_DIR_LIMIT:-200000} --metadata-cache-ttl-secs=0 \
--metadata-cache-negative-ttl-secs=0"
    only_dir=""
    if [[ "${bucket}" == */* ]]; then
      only_dir="--only-dir $(printf '%q' "${bucket#*/}")"
    fi
    ssh_all "set -euo pipefail
      if ! command -v gcsfuse >/dev/null; then
        echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
        curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
        sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
      fi
      sudo mkdir -p $(printf '%q' "${mount_point}") && sudo chown \"\$(id -u):\$(id -g)\" $(printf '%q' "${mount_point}")
      mountpoint -q $(printf '%q' "${mount_point}") || gcsfuse ${gcsfuse_flags} ${only_dir} $(printf '%q' "${bucket%%/*}") $(printf '%q' "${mount_point}")"
  fi
fi

# ----------------------------------------------------------------------------- 4. the run
endpoints="$(gcloud compute tpus tpu-vm describe "${TPU_NAME}" "${common[@]}" --format='value(networkEndpoints[].ipAddress)')"
IFS=';, ' read -r -a ips <<<"${endpoints}"
if [[ ${#ips[@]} -eq 0 || -z "${ips[0]}" ]]; then
  echo "error: no worker addresses for ${TPU_NAME} (gcloud describe gave '${endpoints}')" >&2
  exit 1
fi
args="$(printf ' %q' "$@")"
run="cd ${q_dir} && . .venv-tpu/bin/activate && \
HINQA_COORDINATOR=$(printf '%q' "${ips[0]}:${HINQA_PORT:-8476}") HINQA_NUM_PROCESSES=${#ips[@]} \
HINQA_PROCESS_ID=\$(curl -fs -H 'Metadata-Flavor: Google' \
http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number) \
python -m hinqa_jax${args}"
echo "running on ${#ips[@]} workers of ${TPU_NAME}: python -m hinqa_jax${args}" >&2
if [[ "${DETACH:-0}" == 1 ]]; then
  ssh_all "nohup bash -c $(printf '%q' "${run}") > ~/hinqa-run.log 2>&1 < /dev/null & echo \"\$(hostname): started, log ~/hinqa-run.log\""
else
  ssh_all "${run}"
fi

#!/usr/bin/env bash
# N processes of `python -m hinqa_jax ...` on this machine, joined by jax.distributed (gloo on CPU).
# The way the tests run multi-host on one CPU box, and a quick multi-process check on one GPU node.
#
#   launch/local.sh 2 train --config=configs/tiny.py --workdir=runs/tiny2
#   HINQA_LOCAL_DEVICES=4 launch/local.sh 2 train ...   # 4 fake CPU devices per process
#
# Process 0 prints to the terminal; process i>0 logs to ${HINQA_LOG_DIR:-/tmp}/hinqa-proc-i.log.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 NUM_PROCESSES COMMAND [--config=... --workdir=... flags]" >&2
  exit 2
fi
num="$1"
shift
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-${repo}/.venv/bin/python}"
port="${HINQA_PORT:-$((20000 + RANDOM % 20000))}"
log_dir="${HINQA_LOG_DIR:-/tmp}"
xla_flags="${XLA_FLAGS:-}"
if [[ -n "${HINQA_LOCAL_DEVICES:-}" ]]; then
  xla_flags="${xla_flags} --xla_force_host_platform_device_count=${HINQA_LOCAL_DEVICES}"
fi

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup INT TERM

for ((i = 0; i < num; i++)); do
  if [[ $i -eq 0 ]]; then
    out=/dev/stdout
  else
    out="${log_dir}/hinqa-proc-${i}.log"
  fi
  HINQA_COORDINATOR="127.0.0.1:${port}" HINQA_NUM_PROCESSES="${num}" HINQA_PROCESS_ID="${i}" \
    XLA_FLAGS="${xla_flags}" "${python}" -m hinqa_jax "$@" >"${out}" 2>&1 &
  pids+=("$!")
done

status=0
for pid in "${pids[@]}"; do
  wait "${pid}" || status=$?
done
exit "${status}"

#!/usr/bin/env bash
# The real experiment (Llama-3.1-8B student, VATIKA, LLaMA-3.3-70B and Phi-4 teachers), step by step, with
# every path derived from three directories. Run from the repository root:
#
#   launch/recipe.sh synthesize 0/4     # on GPU node i of N (vLLM env: requirements-gen.txt): i/N of the contexts
#   launch/recipe.sh curate             # once every shard is written: merge, filter, curated/synthetic.jsonl
#   launch/recipe.sh plan v5e-8         # memory plan with the target's real compiler (make aot; any CPU machine)
#   launch/recipe.sh run                # M1, M2 (+ per teacher), M3, ratio sweep, results.md, export of M2
#
# Environment (defaults in brackets):
#   VATIKA   directory of the VATIKA files train.json, val.json, test1.json, test2.json [/data/vatika]
#   MODELS   directory holding Meta-Llama-3.1-8B-Instruct, Llama-3.3-70B-Instruct, phi-4 and
#            bert-base-multilingual-cased (BERTScore) [/models]
#   WORK     the one workdir: gen writes WORK/gen, training every stage, results.md and the export [runs/vatika_8b]
#   PYTHON   interpreter with requirements.txt (or requirements-gen.txt for synthesize/curate) [python]
#   PLAN_PYTHON  interpreter with requirements-aot.txt for `plan` [.venv-aot/bin/python]
#   HINQA    how `run` starts `python -m hinqa_jax` [${PYTHON} -m hinqa_jax]; on a TPU pod slice
#            "launch/tpu_pod.sh --no-setup", on a SLURM GPU cluster "sbatch --wait launch/gpu_slurm.sbatch"
#            (WORK, VATIKA and MODELS then on storage every worker sees)
#   GEN_CONFIG  the teachers' config [configs/gen/llama70b_phi4_vllm.py; configs/gen/openai_endpoint.py for a server]
# Flags after the step's arguments go to its command as they are (e.g. --config.train.num_steps=300).
set -euo pipefail

usage() {
  sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
[[ $# -ge 1 ]] || usage
step="$1"
shift

vatika="${VATIKA:-/data/vatika}"
models="${MODELS:-/models}"
work="${WORK:-runs/vatika_8b}"
python="${PYTHON:-python}"
gen_config="${GEN_CONFIG:-configs/gen/llama70b_phi4_vllm.py}"
student="${models}/Meta-Llama-3.1-8B-Instruct"
# the teachers and the student read the same files; gen's output dir is the student's data.gen_dir
gen_flags=(--config="${gen_config}" --config.data.root="${vatika}" --config.out_dir="${work}/gen")
if [[ "${gen_config}" == *llama70b_phi4* ]]; then
  gen_flags+=(--config.teachers.llama70b.model="${models}/Llama-3.3-70B-Instruct"
    --config.teachers.phi4.model="${models}/phi-4")
fi
student_flags=(--config.data.root="${vatika}" --config.data.gen_dir="${work}/gen"
  --config.model.hf_path="${student}" --config.tokenizer.path="${student}"
  --config.eval.bertscore_model="${models}/bert-base-multilingual-cased")

case "${step}" in
  synthesize)
    [[ $# -ge 1 ]] || usage
    shard="$1"
    shift
    "${python}" -m gen synthesize "${gen_flags[@]}" --shard="${shard}" "$@"
    ;;
  curate)
    "${python}" -m gen curate "${gen_flags[@]}" "$@"
    ;;
  plan)
    [[ $# -ge 1 ]] || usage
    target="$1"
    shift
    "${PLAN_PYTHON:-.venv-aot/bin/python}" -m hinqa_jax plan --config=configs/vatika_llama3_8b_all.py \
      --workdir="${work}" "${student_flags[@]}" --target="${target}" "$@"
    ;;
  run)
    read -r -a launcher <<<"${HINQA:-${python} -m hinqa_jax}"
    "${launcher[@]}" run --config=configs/vatika_llama3_8b_all.py --workdir="${work}" "${student_flags[@]}" "$@"
    ;;
  -h | --help) usage ;;
  *)
    echo "error: unknown step '${step}' (synthesize I/N, curate, plan TARGET, run)" >&2
    usage
    ;;
esac

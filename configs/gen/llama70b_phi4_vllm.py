"""The paper's two teachers, LLaMA-3.3-70B-Instruct and Phi-4 (14B), on vLLM (GPU nodes).

vLLM lives in its own environment (`pip install -r requirements-gen.txt`). Download the weights
to local directories first and set the paths. The teachers read the same VATIKA files as the student
(`data.root`, shared with configs/vatika_llama3_8b_*.py) and write to `out_dir`, whose curated/synthetic.jsonl
is what those configs read as `data.gen_dir` (launch/recipe.sh runs the whole recipe). On node i of N:

  python -m gen synthesize --config=configs/gen/llama70b_phi4_vllm.py --shard=i/N --config.data.root=/data/vatika \
      --config.out_dir=runs/vatika_8b/gen --config.teachers.llama70b.model=/models/Llama-3.3-70B-Instruct \
      --config.teachers.phi4.model=/models/phi-4
  # then, anywhere with the files (merges the shards):
  python -m gen curate --config=configs/gen/llama70b_phi4_vllm.py --config.data.root=/data/vatika \
      --config.out_dir=runs/vatika_8b/gen
"""
from gen import default_config, teacher
from hinqa_jax.config import VATIKA_WORKDIR, vatika_files


def get_config():
  c = default_config()
  c.out_dir = VATIKA_WORKDIR + "/gen"  # teacher outputs; curated data in <out_dir>/curated (the 8B configs' data.gen_dir)
  vatika_files(c.data)  # data.root: the VATIKA files the student trains on (contexts, decontamination)
  c.teachers.llama70b = teacher(
    "vllm",  # offline vllm.LLM(...).chat(...)
    "/models/Llama-3.3-70B-Instruct",  # local checkpoint directory (placeholder)
    tensor_parallel_size=8,  # 70B in bf16 needs ~140 GB: 8 x 24-80 GB GPUs
    max_model_len=8192,  # prompts (context + few-shot) are ~1-2k tokens; smaller KV cache
    temperature=0.7,  # the paper's sampling is unstated; mild diversity
    max_tokens=1536,  # N full-sentence Hindi pairs; Devanagari costs many tokens
    batch_size=256,  # vLLM batches internally: large calls keep the GPUs busy
    structured="json_schema",  # constrained decoding of the JSON list
  )
  c.teachers.phi4 = teacher(
    "vllm",  # offline vllm.LLM(...).chat(...)
    "/models/phi-4",  # local checkpoint directory (placeholder)
    tensor_parallel_size=4,  # 14B in bf16 fits on 4 GPUs with room for the KV cache
    max_model_len=8192,  # well inside Phi-4's 16k window
    temperature=0.7,  # same sampling as the other teacher, for a fair comparison
    max_tokens=1536,  # as above
    batch_size=256,  # as above
    structured="json_schema",  # constrained decoding of the JSON list
  )
  c.prompt.num_pairs = 5  # N new pairs per context and sample
  c.synth.samples_per_context = 2  # two prompts per context with different few-shot examples
  c.curate.judge.judges = "llama70b:phi4,phi4:llama70b"  # each teacher judged by the other (never itself);
  # set curate.judge.enabled=True to run the judge
  c.lock()
  return c

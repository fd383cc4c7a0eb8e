"""A teacher behind any OpenAI-compatible /chat/completions endpoint: `vllm serve` or a hosted API.

The API key is read from the environment variable named by api_key_env, never stored here:

  vllm serve /models/Llama-3.3-70B-Instruct --tensor-parallel-size 8 --port 8000   # on a GPU node, or
  export TEACHER_API_KEY=...                                                         # for a hosted API
  python -m gen synthesize --config=configs/gen/openai_endpoint.py \
      --config.teachers.llama70b.base_url=http://gpu-node:8000/v1
  python -m gen curate --config=configs/gen/openai_endpoint.py
"""
from gen import default_config, teacher
from hinqa_jax.config import VATIKA_WORKDIR, vatika_files


def get_config():
  c = default_config()
  c.out_dir = VATIKA_WORKDIR + "/gen"  # teacher outputs; curated data in <out_dir>/curated (the 8B configs' data.gen_dir)
  vatika_files(c.data)  # data.root: the VATIKA files the student trains on (contexts, decontamination)
  c.teachers.llama70b = teacher(
    "openai",  # POST {base_url}/chat/completions
    "meta-llama/Llama-3.3-70B-Instruct",  # the model name the server knows
    base_url="http://127.0.0.1:8000/v1",  # vllm serve's default address
    api_key_env="TEACHER_API_KEY",  # env var with the key; "" for an endpoint without auth
    temperature=0.7,  # mild diversity
    max_tokens=1536,  # N full-sentence Hindi pairs
    batch_size=64,  # prompts per resumable append
    concurrency=16,  # requests in flight
    timeout_s=180.0,  # a long Hindi list from a 70B model can take a while
    max_tries=6,  # with backoff 2, 4, 8, 16, 32 s: survives a minute of 429s
    backoff_s=2.0,  # first retry delay
    structured="json_schema",  # response_format json_schema, root {"pairs": [...]} (vllm serve and OpenAI accept it)
  )
  # The LLM judge must be another model than the teacher it judges: to use it, add a second teacher
  # section (another endpoint), set curate.judge.judges="llama70b:<that name>" and curate.judge.enabled=True.
  c.lock()
  return c

"""CPU default: our own JAX engine as the one teacher, on an HF-format LLaMA checkpoint directory.

Any directory with config.json, *.safetensors and a tokenizer with a chat template works, e.g. the
merged export of a trained run (`python -m hinqa_jax export ...`). Run from the repo root:

  python -m gen synthesize --config=configs/gen/cpu_jax.py --config.teachers.student.model=PATH
  python -m gen curate --config=configs/gen/cpu_jax.py
"""
from gen import default_config, teacher


def get_config():
  c = default_config()
  c.out_dir = "runs/gen/cpu_jax"  # teacher outputs; curated data in runs/gen/cpu_jax/curated
  c.teachers.student = teacher(
    "jax",  # hinqa_jax.decode.generate on CPU (or whatever JAX backend is present)
    "runs/demo/export/merged",  # HF-format checkpoint directory (placeholder: point it at yours)
    temperature=0.7,  # some diversity between samples
    max_tokens=256,  # a small model writes short lists
    batch_size=4,  # prompts decoded together
  )
  c.prompt.num_pairs = 3  # small models keep a short list coherent
  c.prompt.num_examples = 2  # shorter prompts fit a small context window
  c.lock()
  return c

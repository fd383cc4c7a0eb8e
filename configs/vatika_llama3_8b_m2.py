"""M2: M1's adapters, then the curated synthetic data (and M2 per teacher), on Llama-3.1-8B.

    python -m hinqa_jax run --config=configs/vatika_llama3_8b_m2.py --workdir=runs/vatika_8b \\
        --config.model.hf_path=/path/to/Meta-Llama-3.1-8B-Instruct --config.tokenizer.path=/path/to/it

Local paths (model, VATIKA files, curated synthetic data) and settings: hinqa_jax.config.vatika_llama3_8b.
The vatika_llama3_8b configs share one workdir: M1 is trained once and M2 starts from it.
"""
from hinqa_jax.config import vatika_llama3_8b


def get_config():
  c = vatika_llama3_8b(("m2",))
  c.run.per_teacher = True  # also M2 per teacher (the paper's teacher ablation)
  c.lock()
  return c

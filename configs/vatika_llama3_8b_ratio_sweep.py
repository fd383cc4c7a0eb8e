"""Synthetic-ratio sweep on Llama-3.1-8B: M2 with 10, 25, 50 and 100% of the curated synthetic data.

    python -m hinqa_jax run --config=configs/vatika_llama3_8b_ratio_sweep.py --workdir=runs/vatika_8b \\
        --config.model.hf_path=/path/to/Meta-Llama-3.1-8B-Instruct --config.tokenizer.path=/path/to/...

Shares M1 with the other vatika_llama3_8b configs when run in the same workdir.
"""
from hinqa_jax.config import vatika_llama3_8b


def get_config():
  c = vatika_llama3_8b(("m1",))
  c.run.ratios = (0.1, 0.25, 0.5, 1.0)  # experiments m2_r10, m2_r25, m2_r50, m2_r100
  c.run.export = ""
  c.lock()
  return c

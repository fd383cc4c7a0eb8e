"""The whole real experiment in one run: M1, M2 (and M2 per teacher), M3 and the synthetic-ratio sweep on
Llama-3.1-8B, one results.md comparing them all. What launch/recipe.sh runs:

    python -m hinqa_jax run --config=configs/vatika_llama3_8b_all.py --workdir=runs/vatika_8b \\
        --config.data.root=/data/vatika --config.data.gen_dir=runs/vatika_8b/gen \\
        --config.model.hf_path=/models/Meta-Llama-3.1-8B-Instruct --config.tokenizer.path=/models/Meta-Llama-3.1-8B-Instruct

Stages already trained in the workdir by the single-experiment configs (vatika_llama3_8b_m1/m2/m3/ratio_sweep)
are reused, not trained again. Paths and settings: hinqa_jax.config.vatika_llama3_8b.
"""
from hinqa_jax.config import vatika_llama3_8b


def get_config():
  c = vatika_llama3_8b(("m1", "m2", "m3"))
  c.run.per_teacher = True  # also M2 per teacher (the paper's teacher ablation)
  c.run.ratios = (0.1, 0.25, 0.5, 1.0)  # and M2 on 10, 25, 50 and 100% of the synthetic data
  c.run.export = "m2"  # the paper's most robust regime on the held-out Test-2
  c.lock()
  return c

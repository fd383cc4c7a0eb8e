"""One short LoRA stage of the tiny model on the bundled mini VATIKA set (CPU, seconds).

    python -m hinqa_jax train --config=configs/tiny.py --workdir=runs/tiny
    python -m hinqa_jax train --config=configs/tiny.py --workdir=runs/tiny8 \\
        --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2   # on 8 devices
"""
from hinqa_jax.config import default_config


def get_config():
  c = default_config()
  c.model.preset = "tiny"
  c.data.seq_len = 384  # two bundled examples (~160 tokens each) per row
  c.train.num_steps = 20
  c.train.batch_size = 8
  c.train.learning_rate = 1e-3
  c.train.warmup_steps = 2
  c.checkpoint.every_steps = 10
  c.lock()
  return c

"""Experiment M1 of the paper on Llama-3.1-8B and the real VATIKA data (paths are local: override them).

    python -m hinqa_jax plan --config=configs/vatika_llama3_8b_m1.py --devices=8 --device_memory=h100
    python -m hinqa_jax run --config=configs/vatika_llama3_8b_m1.py --workdir=runs/vatika_8b \
        --config.model.hf_path=/path/to/Meta-Llama-3.1-8B-Instruct \
        --config.tokenizer.path=/path/to/Meta-Llama-3.1-8B-Instruct \
        --config.data.train=/path/to/vatika/train.json --config.data.val=/path/to/vatika/val.json \
        --config.data.test1=/path/to/vatika/test1.json --config.data.test2=/path/to/vatika/test2.json

The three experiment configs share one workdir: M2's first stage is M1's, trained once.
"""
from hinqa_jax.config import vatika_llama3_8b


def get_config():
  c = vatika_llama3_8b(("m1",))
  c.lock()
  return c

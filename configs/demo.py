"""The whole pipeline on the bundled mini VATIKA set, on CPU, from nothing: `make demo`.

    python -m hinqa_jax run --config=configs/demo.py --workdir=runs/demo

Tokenizer trained on the training split; a small base LLaMA pretrained from scratch on the training
text (stand-in for Llama-3.1-8B); two small teachers fine-tuned from it on the generation task
(stand-ins for LLaMA-70B and Phi-4) write synthetic pairs through gen/ with our JAX engine; curation;
M1, M2, M3 with LoRA; evaluation on val, test1, test2; report; HF + PEFT export of M2.
A tiny model proves the pipeline end to end, not the paper's numbers.
"""
from gen import default_config as gen_default_config
from hinqa_jax.config import default_config


def get_config():
  c = default_config()
  c.tokenizer.path = ""  # "" = train one on data.train into WORKDIR/tokenizer
  c.model.preset = "demo"  # small LLaMA-3 shaped model, vocab from the tokenizer
  c.data.seq_len = 512
  c.pretrain.steps = 100
  c.pretrain.learning_rate = 3e-3
  c.pretrain.batch_size = 8
  c.synthetic.source = "teachers"
  c.synthetic.teachers = ("teacher_a", "teacher_b")
  c.synthetic.teacher_steps = 160
  c.synthetic.teacher_seq_len = 640
  c.synthetic.samples_per_context = 4
  c.synthetic.temperature = 0.7
  c.synthetic.max_tokens = 320
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.train.num_steps = 100
  c.train.batch_size = 8
  c.train.learning_rate = 2e-3
  c.train.warmup_steps = 10
  c.train.eval_every_steps = 25  # val loss 4 times per stage, drawn dashed in loss.png
  c.checkpoint.every_steps = 50
  c.run.stage2_steps = 50
  c.eval.max_new_tokens = 48
  c.eval.batch_size = 16
  c.gen = gen_default_config()  # the synthetic-data stage's settings (configs/gen/*.py hold the same keys)
  c.gen.prompt.num_examples = 0  # the small teachers were trained on zero-shot prompts
  c.gen.prompt.show_existing = False
  c.gen.prompt.num_pairs = 3
  c.gen.synth.samples_per_context = 2
  c.lock()
  return c

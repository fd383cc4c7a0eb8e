"""LoRA training throughput: our jitted train step against transformers + PEFT, same weights and data, one run.

    .venv/bin/python bench/train.py     # batch 4 x 512 tokens, LoRA r=16 on all 7 projections, bench30m (37M) float32
    .venv/bin/python bench/train.py --labels=answers --model=layer34m   # packed bundled rows, answer tokens only

Both sides do one optimizer step per call: forward, backward, global-norm clip, AdamW on the adapters.
--labels=all: random tokens, one segment per row, cross entropy on every next token.
--labels=answers: the first rows of the bundled data/vatika_mini train split as our packer packs them (bundled
tokenizer, ids < 4096 fit every bench vocab), loss on answer tokens only: ours with the loss mask and the
packer's loss cap (the head only at loss positions), PEFT with completion-only labels (-100 elsewhere) and
the packed segments as a block-diagonal causal 4D mask with restarting position ids. Both step-0 losses
(same weights, adapters' B = 0) must agree within 1e-4: the fairness check. tok/s counts every token of the rows.
MFU: analytic model FLOPs (plan.analytic_flops: 2N forward + 2N backward to activations over every matmul
weight incl. the output head (with --labels=answers at the loss positions only: the rest is not needed),
6 per LoRA weight, attention scores and probs @ V) / step time / the
float32 matmul peak measured in this run. Timing: warm-up, then rounds of (ours, theirs, peak), best of each.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hinqa_jax import cpu_tuning  # noqa: E402

cpu_tuning.keep_freed_memory()  # as `python -m hinqa_jax train` does; before jax and torch start threads (both sides share it)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import MODELS, best_time, bench_models, machine, matmul_peak_flops  # noqa: E402
from hinqa_jax import lora, model, packing, plan, sharding, train  # noqa: E402
from hinqa_jax.config import default_config  # noqa: E402


def _rows(labels: str, cfg, batch: int, seq_len: int, workdir: str) -> tuple[dict, int | None]:
  """(rows {tokens, segment_ids, positions, loss_mask} [B,T] int32, the packer's loss cap or None)."""
  if labels == "all":
    tokens = np.random.RandomState(0).randint(3, cfg.vocab_size, (batch, seq_len))
    ones = np.ones((batch, seq_len), np.int32)
    return {"tokens": tokens.astype(np.int32), "segment_ids": ones,
            "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)), "loss_mask": ones}, None
  c = default_config()
  c.data.seq_len = seq_len
  manifest = packing.prepare(c, Path(workdir) / "packed")  # data/vatika_mini/train.json, data/tokenizer
  if manifest["vocab_size"] > cfg.vocab_size:
    raise ValueError(f"the bundled tokenizer's {manifest['vocab_size']} ids do not fit vocab {cfg.vocab_size}")
  data = packing.PackedDataset(Path(workdir) / "packed")
  if data.num_rows < batch:
    raise ValueError(f"the bundled train split packs into {data.num_rows} rows, fewer than --batch {batch}")
  return data.read_rows(np.arange(batch)), manifest["loss_cap"]


def _hf_inputs(rows: dict) -> dict:
  """transformers inputs for packed rows: position ids restarting per segment, a float 4D mask (0 where a
  token may attend: same segment, not later; padding attends only to itself so no softmax row is empty),
  and labels -100 except where our step has a target (HF shifts: labels[t+1] is predicted at t)."""
  seg = torch.tensor(rows["segment_ids"], dtype=torch.long)
  t = seg.shape[1]
  causal = torch.ones(t, t, dtype=torch.bool).tril()
  allowed = (seg[:, :, None] == seg[:, None, :]) & causal & (seg[:, None, :] != 0)
  allowed |= torch.eye(t, dtype=torch.bool)
  mask = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
  tokens = torch.tensor(rows["tokens"], dtype=torch.long)
  target = (torch.tensor(rows["loss_mask"][:, 1:]) > 0) & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
  labels = torch.full_like(tokens, -100)
  labels[:, 1:] = torch.where(target, tokens[:, 1:], -100)
  return {"input_ids": tokens, "position_ids": torch.tensor(rows["positions"], dtype=torch.long),
          "attention_mask": mask[:, None], "labels": labels}


def _ours(cfg, params, rows: dict, lr: float, rank: int, loss_cap: int | None):
  """(a zero-argument call running one donated, jitted train step and returning its loss, the LoraConfig)."""
  c = default_config()
  c.lora.rank, c.lora.alpha = rank, 2.0 * rank
  c.train.learning_rate, c.train.warmup_steps = lr, 0
  lcfg = train.lora_config(c)
  optimizer, schedule = train.make_optimizer(c.train)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in rows.items()}
  adapters = lora.init(cfg, lcfg, jax.random.key(0))
  state = {"step": jnp.int32(0), "trainable": adapters, "opt_state": optimizer.init(adapters)}
  step = jax.jit(train.make_step(cfg, lcfg, "lora", optimizer, schedule, 1, 0, mesh, loss_cap), donate_argnums=(0,))
  box = {"state": state}

  def run():
    box["state"], metrics = step(box["state"], params, batch)
    return metrics["loss"].block_until_ready()

  return run, lcfg


def peft_step(m, lr: float, rank: int):
  """(step(inputs) -> loss running one transformers + PEFT step: forward, backward, clip, AdamW; trainable count)."""
  from peft import LoraConfig, get_peft_model
  pm = get_peft_model(m, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(lora.ALL_TARGETS)))
  pm.train()
  params = [p for p in pm.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

  def step(inputs: dict):
    loss = pm(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()

  return step, sum(p.numel() for p in params)


def _theirs(m, rows: dict, labels: str, lr: float, rank: int):
  """The same step in transformers + PEFT (float32 on CPU) on these rows."""
  step, n_trainable = peft_step(m, lr, rank)
  x = torch.tensor(rows["tokens"], dtype=torch.long)
  # all: HF shifts the labels itself, every next token of the row, mean over them; answers: see _hf_inputs.
  inputs = {"input_ids": x, "labels": x} if labels == "all" else _hf_inputs(rows)
  return lambda: step(inputs), n_trainable


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq_len", type=int, default=512)
  ap.add_argument("--rank", type=int, default=16)
  ap.add_argument("--lr", type=float, default=2e-4)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--model", choices=sorted(MODELS), default="bench30m")
  ap.add_argument("--labels", choices=("all", "answers"), default="all")
  args = ap.parse_args(argv)
  m, cfg, params = bench_models(name=args.model)
  with tempfile.TemporaryDirectory() as d:
    rows, loss_cap = _rows(args.labels, cfg, args.batch, args.seq_len, d)
  ours, lcfg = _ours(cfg, params, rows, args.lr, args.rank, loss_cap)
  theirs, their_trainable = _theirs(m, rows, args.labels, args.lr, args.rank)

  # First calls compile (ours) and warm up (theirs); B = 0 on both sides, so both first losses are the base
  # model's. Then rounds of (ours, theirs, matmul peak), keeping each one's best: on a shared machine a
  # burst of load from elsewhere then hits all three alike instead of whichever ran at that moment.
  loss_ours, loss_theirs = float(ours()), float(theirs())
  if abs(loss_ours - loss_theirs) > 1e-4:  # the two sides would not be computing the same thing
    raise SystemExit(f"step-0 losses differ: ours {loss_ours:.6f}, PEFT {loss_theirs:.6f}")
  t_ours = t_theirs = float("inf")
  peak = 0.0
  for _ in range(args.reps):
    t_ours = min(t_ours, best_time(ours, 1))
    t_theirs = min(t_theirs, best_time(theirs, 1))
    peak = max(peak, matmul_peak_flops())
  flops = plan.analytic_flops(cfg, lcfg, "lora", args.batch, args.seq_len)
  if loss_cap is not None:  # the head's work is needed only at the loss positions (4 FLOPs per weight each)
    targets = int((_hf_inputs(rows)["labels"] != -100).sum())
    flops["model"] -= 4 * cfg.dim * cfg.vocab_size * (args.batch * args.seq_len - targets)
  tokens_step = args.batch * args.seq_len
  result = {"bench": "train_lora", "model": args.model, "params": model.count_params(params), "lora_params": flops["lora_params"],
            "peft_trainable": their_trainable, "batch": args.batch, "seq_len": args.seq_len, "rank": args.rank,
            "labels": args.labels, "loss_cap": loss_cap, "loss_tokens": int(np.sum(rows["loss_mask"])),
            "ours_tok_s": tokens_step / t_ours, "peft_tok_s": tokens_step / t_theirs, "speedup": t_theirs / t_ours,
            "model_flops_per_step": flops["model"], "peak_flops": peak,
            "ours_mfu": flops["model"] / t_ours / peak, "peft_mfu": flops["model"] / t_theirs / peak,
            "first_loss_ours": loss_ours, "first_loss_peft": loss_theirs, "machine": machine()}
  print(f"train (LoRA r={args.rank}, {args.model}, labels={args.labels}): ours {result['ours_tok_s']:.0f} tok/s, transformers+PEFT "
        f"{result['peft_tok_s']:.0f} tok/s, ratio {result['speedup']:.2f}x; MFU ours {100 * result['ours_mfu']:.1f}%, "
        f"PEFT {100 * result['peft_mfu']:.1f}% of a {peak / 1e9:.0f} GFLOP/s matmul peak "
        f"({result['params'] / 1e6:.1f}M params, first loss {loss_ours:.4f} vs {loss_theirs:.4f})")
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()

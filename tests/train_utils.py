"""A small in-memory packed dataset and config for training tests (same interface as packing.PackedDataset)."""
import numpy as np

from hinqa_jax.config import default_config

SEQ = 32
VOCAB = 256


class ToyPacked:
  """Deterministic rows: two segments each, the second half of each segment loss-masked, then padding."""
  seq_len = SEQ

  def __init__(self, rows: int = 64):
    rs = np.random.RandomState(0)
    self.tokens = rs.randint(0, VOCAB, (rows, SEQ)).astype(np.int32)
    self.segment_ids = np.zeros((rows, SEQ), np.int32)
    self.positions = np.zeros((rows, SEQ), np.int32)
    self.loss_mask = np.zeros((rows, SEQ), np.int32)
    for r in range(rows):
      a = rs.randint(8, 18)
      b = rs.randint(6, SEQ - a - 1)
      self.segment_ids[r, :a], self.segment_ids[r, a:a + b] = 1, 2
      self.positions[r, :a], self.positions[r, a:a + b] = np.arange(a), np.arange(b)
      self.loss_mask[r, a // 2:a], self.loss_mask[r, a + b // 2:a + b] = 1, 1

  def get_batch(self, step, batch_size, seed, positions=None):
    rows = np.random.RandomState([seed, step]).choice(len(self.tokens), batch_size, replace=False)
    rows = rows if positions is None else rows[positions]
    return {k: getattr(self, k)[rows] for k in ("tokens", "segment_ids", "positions", "loss_mask")}


def toy_config(steps=5, batch=8, mesh=(-1, 1, 1), every=100):
  c = default_config()
  c.model.preset = "tiny"
  c.model.vocab_size = VOCAB
  c.data.seq_len = SEQ
  c.lora.rank = 4
  c.lora.alpha = 8.0
  c.train.num_steps = steps
  c.train.batch_size = batch
  c.train.learning_rate = 1e-2
  c.train.warmup_steps = 2
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  c.checkpoint.every_steps = every
  return c

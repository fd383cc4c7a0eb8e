"""Tiny random Hugging Face LLaMAs, built in a temp dir (no network), for parity tests."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_hf_config(kv_heads: int = 2, llama3_scaling: bool = True, tie: bool = False, vocab: int = 256,
                   layers: int = 2, original_max_pos: int = 16, ffn: int = 96) -> LlamaConfig:
  rope = {"rope_type": "default", "rope_theta": 10000.0}
  if llama3_scaling:
    # Short original max positions so test sequences run past them into the scaled band.
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": original_max_pos}
  return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=ffn, num_hidden_layers=layers,
                     num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=16, max_position_embeddings=512,
                     rms_norm_eps=1e-5, rope_parameters=rope, tie_word_embeddings=tie, bos_token_id=1,
                     eos_token_id=[2, 3], pad_token_id=0)


def tiny_hf_model(path, seed: int = 0, **kw) -> LlamaForCausalLM:
  """A float32 random LLaMA saved at `path`; norms randomised too, so a mix-up of them shows."""
  torch.manual_seed(seed)
  m = LlamaForCausalLM(tiny_hf_config(**kw)).float().eval()
  with torch.no_grad():
    for name, p in m.named_parameters():
      if "norm" in name:
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
  m.save_pretrained(path)
  return m


def tiny_bert(path, model_max_length: int | None = 128) -> str:
  """A random 2-layer BERT (hidden 32, Devanagari word pieces, cased as mBERT) with its tokenizer at `path`;
  model_max_length=None saves the tokenizer without it (as mBERT's hub files, which then load as 1e30)."""
  import unicodedata
  from pathlib import Path

  from transformers import BertConfig, BertModel, BertTokenizer
  root = Path(path)
  root.mkdir(parents=True, exist_ok=True)
  chars = [chr(c) for c in range(0x0900, 0x0980) if unicodedata.category(chr(c)) != "Cn"]
  chars += list("0123456789.,?!-")
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
  (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
  torch.manual_seed(0)
  cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=128)
  BertModel(cfg).save_pretrained(root)
  extra = {} if model_max_length is None else {"model_max_length": model_max_length}
  # Cased, as mBERT: lowercasing would strip accents, i.e. every matra (category Mn).
  tok = BertTokenizer(str(root / "vocab.txt"), do_lower_case=False, **extra)
  assert tok.tokenize("है।") == ["ह", "##ै", "।"]
  tok.save_pretrained(root)
  return str(root)


@contextlib.contextmanager
def transformers_serve(log_path, model_dir=None):
  """`transformers serve` on 127.0.0.1 (offline, CPU, float32), its /v1 URL yielded once /health answers.
  model_dir: the one model it serves; None: it loads each request's model from that path."""
  import os
  import socket
  import subprocess
  import sys
  import time
  import urllib.request
  from pathlib import Path
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
  model = [] if model_dir is None else [str(model_dir)]
  log = open(log_path, "w")
  proc = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", *model,
                           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--dtype", "float32"],
                          stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
  try:
    deadline = time.monotonic() + 90
    while True:
      try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
        break
      except OSError:
        if proc.poll() is not None or time.monotonic() > deadline:
          log.flush()
          raise RuntimeError("transformers serve did not come up:\n" + Path(log_path).read_text()[-3000:])
        time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/v1"
  finally:
    proc.terminate()
    try:
      proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    log.close()


def hf_logits(m, tokens: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
  with torch.no_grad():
    kw = {} if attention_mask is None else {"attention_mask": torch.tensor(attention_mask)}
    return m(torch.tensor(tokens, dtype=torch.long), **kw).logits.float().numpy()

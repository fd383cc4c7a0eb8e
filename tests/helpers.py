"""Tiny random Hugging Face LLaMAs, built in a temp dir (no network), for parity tests."""
from __future__ import annotations

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


def hf_logits(m, tokens: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
  with torch.no_grad():
    kw = {} if attention_mask is None else {"attention_mask": torch.tensor(attention_mask)}
    return m(torch.tensor(tokens, dtype=torch.long), **kw).logits.float().numpy()

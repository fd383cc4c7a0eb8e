"""Tokenizers: load any local HF tokenizer (Llama-3.1's or the bundled one), train the bundled one.

The bundled tokenizer is a byte-level BPE with Llama-3's special tokens and chat layout, so the
rest of the code has one path for both; `examples.build_bundled_tokenizer` recreates it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable

import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from hinqa_jax.files import atomic_dir, repo_path


BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
PAD = "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = (BOS, EOS, HEADER_START, HEADER_END, EOT, PAD)
# Every token a Llama-3.x model may end a turn or a document with.
STOP_TOKENS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")

# Llama-3's pre-tokenizer regex with combining marks (\p{M}) counted as letters: Devanagari vowel
# signs are marks, and Llama-3's own regex cuts every Hindi word apart at them.
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{M}\p{N}]?[\p{L}\p{M}]+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# The Llama-3 layout, simplified (no tools, no date header):
# <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>...
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


def load_tokenizer(path: str | os.PathLike) -> Any:
  """A local Hugging Face tokenizer directory -> transformers tokenizer (never the hub)."""
  path = repo_path(path)
  if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
    raise ValueError(f"{path}: not a tokenizer directory (no tokenizer.json or tokenizer_config.json)")
  return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def stop_ids(tokenizer: Any) -> list[int]:
  """eos plus every Llama-3 end token present in the vocabulary (128001/128008/128009 for 3.1)."""
  ids = set()
  if tokenizer.eos_token_id is not None:
    ids.add(int(tokenizer.eos_token_id))
  vocab = tokenizer.get_vocab()
  ids.update(int(vocab[t]) for t in STOP_TOKENS if t in vocab)
  return sorted(ids)


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 4096,
                    min_frequency: int = 2) -> Any:
  """Train a byte-level BPE of exactly vocab_size tokens and save it HF-style.

  As in Llama-3, the special tokens follow the BPE tokens, then <|reserved_special_token_N|>s fill
  up to vocab_size: a small corpus runs out of merges early, and a round vocabulary keeps the
  embedding shardable. The same texts give the same files, whatever their order.
  """
  texts = [t for t in texts if t]
  if not texts:
    raise ValueError(f"{out_dir}: no text to train the tokenizer on")
  n_base = vocab_size - len(SPECIAL_TOKENS)
  if n_base < 256:
    raise ValueError(f"{out_dir}: vocab_size {vocab_size} leaves no room above the 256 bytes")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=n_base, min_frequency=min_frequency, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(sorted(texts), trainer)  # sorted: the input order never matters
  n_reserved = n_base - tok.get_vocab_size()
  specials = SPECIAL_TOKENS + tuple(f"<|reserved_special_token_{i}|>" for i in range(n_reserved))
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
  bos_id = tok.token_to_id(BOS)
  tok.post_processor = processors.TemplateProcessing(
      single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
  specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
  config = {"tokenizer_class": "PreTrainedTokenizerFast", **specials, "chat_template": CHAT_TEMPLATE,
            "model_max_length": 131072, "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"]}
  with atomic_dir(out_dir) as tmp:  # never a half-written tokenizer
    (tmp / "tokenizer.json").write_text(tok.to_str(pretty=False) + "\n", encoding="utf-8")
    (tmp / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, sort_keys=True) + "\n",
                                                 encoding="utf-8")
  return load_tokenizer(out_dir)


def tokenizer_hash(tokenizer: Any) -> str:
  """sha256 over the tokenizer's vocabulary, merges, special tokens and chat template."""
  if isinstance(tokenizer, (str, os.PathLike)):
    tokenizer = load_tokenizer(tokenizer)
  backend = json.loads(tokenizer.backend_tokenizer.to_str())
  parts = {"backend": backend, "chat_template": tokenizer.chat_template,
           "specials": [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]}
  return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

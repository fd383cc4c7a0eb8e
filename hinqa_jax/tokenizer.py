"""Tokenizers: load any local HF tokenizer (Llama-3.1's or the bundled one), train the bundled one.

The bundled tokenizer is a byte-level BPE with Llama-3's special tokens and chat layout, so the
rest of the code has one path for both. Recreate it (deterministic) with:

  .venv/bin/python -c "from hinqa_jax import tokenizer; tokenizer.build_bundled_tokenizer()"
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DIR = REPO_ROOT / "data" / "tokenizer"
BUNDLED_TRAIN = REPO_ROOT / "data" / "vatika_mini" / "train.json"

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
  import transformers
  path = Path(path)
  if not path.is_dir() and not path.is_absolute() and (REPO_ROOT / path).is_dir():
    path = REPO_ROOT / path  # config paths are relative to the repo root
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


def _write_dir_atomically(out_dir: Path, files: dict[str, str]) -> None:
  """Write files into a sibling temp dir, then swap it in: never a half-written tokenizer."""
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp", dir=out_dir.parent))
  tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary shared directory
  for name, text in files.items():
    (tmp / name).write_text(text, encoding="utf-8")
  old = None
  if out_dir.exists():
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    out_dir.rename(old)
  tmp.rename(out_dir)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 4096,
                    min_frequency: int = 2) -> Any:
  """Train a byte-level BPE of exactly vocab_size tokens and save it HF-style.

  As in Llama-3, the special tokens follow the BPE tokens, then <|reserved_special_token_N|>s fill
  up to vocab_size: a small corpus runs out of merges early, and a round vocabulary keeps the
  embedding shardable. The same texts give the same files, whatever their order.
  """
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
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
  out_dir = Path(out_dir)
  _write_dir_atomically(out_dir, {
      "tokenizer.json": tok.to_str(pretty=False) + "\n",
      "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2, sort_keys=True) + "\n",
      "special_tokens_map.json": json.dumps(specials, indent=2, sort_keys=True) + "\n"})
  return load_tokenizer(out_dir)


def tokenizer_hash(tokenizer: Any) -> str:
  """sha256 over the tokenizer's vocabulary, merges, special tokens and chat template."""
  if isinstance(tokenizer, (str, os.PathLike)):
    tokenizer = load_tokenizer(tokenizer)
  backend = json.loads(tokenizer.backend_tokenizer.to_str())
  parts = {"backend": backend, "chat_template": tokenizer.chat_template,
           "specials": [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]}
  return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def build_bundled_tokenizer(train_path: str | os.PathLike = BUNDLED_TRAIN,
                            out_dir: str | os.PathLike = BUNDLED_DIR, vocab_size: int = 4096) -> Any:
  """Recreate data/tokenizer from data/vatika_mini/train.json only (so Test-2 words stay unseen).

  Trained on every context, question and answer of the file, plus the fixed prompt text.
  """
  from hinqa_jax import data
  records = data.read_records(train_path)
  contexts = sorted({r.context for r in records})  # a context shared by many QAs counts once
  texts = contexts + [r.question for r in records] + [r.answer for r in records]
  # The fixed prompt text starts every training example, so it is weighted like one: the model
  # sees it once per record. It is not data, so no val/test text leaks in.
  texts += [data.SYSTEM_PROMPT + "\nसंदर्भ: प्रश्न: उत्तर:"] * len(records)
  tok = train_tokenizer(texts, out_dir, vocab_size=vocab_size)
  print(f"tokenizer: {len(tok)} tokens from {len(records)} records of {train_path} -> {out_dir} "
        f"(sha256 {tokenizer_hash(tok)[:12]})")
  return tok

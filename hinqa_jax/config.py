"""The one config schema every experiment file in configs/ starts from.

Each `configs/*.py` calls `default_config()`, changes what it needs and returns the config locked,
so a typo in `--config.key=value` is an error instead of a silently ignored key.
"""
from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import ml_collections
from ml_collections import config_dict

# The real experiment's layout: the VATIKA files (train/val/test1/test2.json) under one directory, and one
# workdir holding gen's output (<workdir>/gen) next to the stages. The gen configs and the 8B configs share
# these defaults, so `python -m gen curate` writes what `python -m hinqa_jax run` reads.
VATIKA_ROOT = "/data/vatika"
VATIKA_WORKDIR = "runs/vatika_8b"
VATIKA_SPLITS = ("train", "val", "test1", "test2")


def default_config() -> ml_collections.ConfigDict:
  """Every setting with its default and its comment (what `--help` prints): one flat list, long on purpose."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # the one seed: data order, LoRA init, dropout, sampling

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"  # ModelConfig preset name, used when hf_path is empty
  c.model.hf_path = ""  # local Hugging Face LLaMA directory; overrides preset when set
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"  # dtype of frozen base weights: float32 | bfloat16
  c.model.vocab_size = 0  # 0 = take the tokenizer's vocabulary size (presets trained from scratch)
  c.model.n_layers = 0  # 0 = the preset's; fewer: a slice of the model at full width (plans, tests, benches)
  c.model.remat = "none"  # none | full | dots: activation checkpointing policy of each layer
  c.model.layer_loop = "auto"  # auto | scan | unroll: auto unrolls the layers on CPU, scans them elsewhere
  c.model.quantize = ""  # "" | int8 | nf4: frozen projection kernels stored quantized (QLoRA's NF4), dequantized per layer
  c.model.quantize_block = 64  # NF4: inputs per absmax block (bitsandbytes' default 64)

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = "data/tokenizer"  # HF tokenizer directory (Llama-3.1's, or the bundled one)

  c.data = ml_collections.ConfigDict()
  c.data.train = ("data/vatika_mini/train.json",)  # original training files (any reader format)
  c.data.synthetic = ()  # curated synthetic JSONL files (gen/ output)
  c.data.val = "data/vatika_mini/val.json"  # validation split
  c.data.test1 = "data/vatika_mini/test1.json"  # in-distribution test
  c.data.test2 = "data/vatika_mini/test2.json"  # held-out test (unseen contexts and places)
  c.data.seq_len = 512  # packed row length in tokens
  c.data.template = "auto"  # auto (chat if the tokenizer has a template) | chat | plain
  c.data.strict = False  # stop on bad records (all reported at once) instead of skipping and listing them

  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 16  # adapter rank r
  c.lora.alpha = 32.0  # scale = alpha / r (alpha / sqrt(r) with rslora)
  c.lora.targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # adapted projections
  c.lora.dropout = 0.0  # dropout on the adapter input
  c.lora.rslora = False  # rank-stabilised scaling alpha / sqrt(r)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel axis size; -1 = all devices left over
  c.mesh.fsdp = 1  # fully-sharded data-parallel axis size (shards frozen weights and adapters)
  c.mesh.tensor = 1  # tensor-parallel axis size (shards heads and MLP hidden)

  c.train = ml_collections.ConfigDict()
  c.train.stage = "train"  # stage name of `train`: writes WORKDIR/<stage>/
  c.train.mode = "lora"  # lora (adapters only) | full (all weights: pretraining a small base)
  c.train.num_steps = 100  # optimizer steps of the stage
  c.train.num_epochs = 0.0  # > 0: instead of num_steps, ceil(num_epochs * packed rows / batch_size) steps (logged)
  c.train.batch_size = 8  # global batch in packed rows per optimizer step
  c.train.grad_accum = 1  # micro-batches per step (batch_size must divide by it)
  c.train.learning_rate = 2e-4  # peak learning rate
  c.train.warmup_steps = 10  # linear warm-up steps
  c.train.min_lr_ratio = 0.1  # cosine decays to learning_rate * this
  c.train.weight_decay = 0.0  # AdamW decoupled weight decay
  c.train.clip_norm = 1.0  # global gradient-norm clip
  c.train.log_every = 1  # steps between metrics.jsonl lines
  c.train.eval_every_steps = 0  # steps between val losses (data.val's answer tokens, packed alike); 0 = none
  c.train.keep_best = False  # also keep the checkpoint of lowest val loss; evaluation, export and M2 then use it
  c.train.reset_optimizer = True  # a stage restored from another starts with fresh optimizer state

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 50  # save period (a save also happens at the end and on SIGTERM)
  c.checkpoint.keep = 2  # checkpoints kept per stage
  c.checkpoint.preempt_grace_s = 60.0  # after SIGTERM, exit 143 even if no step boundary came (one process)

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.steps = 0  # > 0: first train the base from scratch (all weights) on the training text (CPU demo)
  c.pretrain.learning_rate = 3e-3  # peak learning rate of that pretraining
  c.pretrain.batch_size = 16  # rows per pretraining step

  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.source = "files"  # files: data.synthetic as given | teachers: train small teachers, synthesize, curate
  c.synthetic.teachers = ("teacher_a", "teacher_b")  # teachers trained from the base (source=teachers)
  c.synthetic.teacher_steps = 150  # full fine-tuning steps of each small teacher
  c.synthetic.teacher_seq_len = 1024  # row length of the teacher task (prompt + JSON list of pairs)
  c.synthetic.samples_per_context = 4  # teacher-task targets per training context (different pair subsets)
  c.synthetic.temperature = 0.9  # teachers' sampling temperature when synthesizing
  c.synthetic.max_tokens = 384  # teachers' generation budget per prompt

  c.run = ml_collections.ConfigDict()
  c.run.experiments = ("m1", "m2", "m3")  # m1 original | m2 original then synthetic | m3 mixed
  c.run.seeds = ()  # train every experiment once per seed, e.g. (0, 1, 2) (stages <name>_s<seed>); () = (seed,)
  c.run.per_teacher = False  # also M2 on each teacher's synthetic data alone (m2_<teacher>)
  c.run.ratios = ()  # also M2 on this fraction of the synthetic data, e.g. (0.1, 0.25, 0.5, 1.0) (m2_r<pct>)
  c.run.stage2_steps = 0  # steps of M2's synthetic stage; 0 = train.num_steps
  c.run.export = "m2"  # experiment whose adapters are exported (merged HF + PEFT); "" = none

  c.eval = ml_collections.ConfigDict()
  c.eval.max_new_tokens = 64  # generation budget per answer
  c.eval.batch_size = 16  # prompts per generate call
  c.eval.max_examples = 0  # 0 = every record of a split
  c.eval.bertscore_model = ""  # local BERT directory for BERTScore; empty = not computed
  c.eval.bertscore_layer = 9  # layer of that model used for BERTScore
  c.eval.n_bootstrap = 1000  # bootstrap resamples of the 95% confidence intervals
  c.eval.n_trials = 10000  # approximate-randomization trials of each comparison's p-value
  c.eval.significance_seed = 12345  # seed of that resampling (> 0; sacrebleu's default)
  return c


# (key, test, what it must be): checked by `check` before any command does work.
_RULES = (
    ("model.dtype", lambda v: v in ("float32", "bfloat16"), "float32 or bfloat16"),
    ("model.param_dtype", lambda v: v in ("float32", "bfloat16", "float16"), "float32, bfloat16 or float16"),
    ("model.vocab_size", lambda v: v >= 0, ">= 0"),
    ("model.n_layers", lambda v: v >= 0, ">= 0"),
    ("model.quantize", lambda v: v in ("", "int8", "nf4"), '"", int8 or nf4'),
    ("model.quantize_block", lambda v: v >= 2 and v % 2 == 0, "an even number >= 2"),
    ("data.seq_len", lambda v: v >= 2, ">= 2"),
    ("lora.rank", lambda v: v >= 1, ">= 1"),
    ("lora.alpha", lambda v: v > 0, "> 0"),
    ("lora.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train.mode", lambda v: v in ("lora", "full"), "lora or full"),
    ("train.num_steps", lambda v: v >= 1, ">= 1"),
    ("train.num_epochs", lambda v: v >= 0, ">= 0"),
    ("train.batch_size", lambda v: v >= 1, ">= 1"),
    ("train.grad_accum", lambda v: v >= 1, ">= 1"),
    ("train.learning_rate", lambda v: v > 0, "> 0"),
    ("train.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("train.min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("train.weight_decay", lambda v: v >= 0, ">= 0"),
    ("train.clip_norm", lambda v: v > 0, "> 0"),
    ("train.log_every", lambda v: v >= 1, ">= 1"),
    ("train.eval_every_steps", lambda v: v >= 0, ">= 0"),
    ("checkpoint.every_steps", lambda v: v >= 1, ">= 1"),
    ("checkpoint.keep", lambda v: v >= 1, ">= 1"),
    ("checkpoint.preempt_grace_s", lambda v: v > 0, "> 0"),
    ("pretrain.steps", lambda v: v >= 0, ">= 0"),
    ("pretrain.batch_size", lambda v: v >= 1, ">= 1"),
    ("run.stage2_steps", lambda v: v >= 0, ">= 0"),
    ("eval.max_new_tokens", lambda v: v >= 1, ">= 1"),
    ("eval.batch_size", lambda v: v >= 1, ">= 1"),
    ("eval.max_examples", lambda v: v >= 0, ">= 0"),
    ("eval.bertscore_layer", lambda v: v >= 1, ">= 1"),
    ("eval.n_bootstrap", lambda v: v >= 40, ">= 40 (the 95% interval trims 1/40 from each end)"),
    ("eval.n_trials", lambda v: v >= 1, ">= 1"),
    ("eval.significance_seed", lambda v: v > 0, "> 0"),
)


def _bertscore_layers(model_dir: str) -> int | None:
  """Layers of the local BERTScore model, or None where there is none to read (it is then noted, not scored)."""
  cfg = Path(model_dir) / "config.json"
  return json.loads(cfg.read_text()).get("num_hidden_layers") if model_dir and cfg.is_file() else None


def check(config: ml_collections.ConfigDict) -> None:
  """Every value `_RULES` names is in range, or a ValueError naming each key, its value and the rule (all at
  once): a bad --config.key=value stops before anything is compiled or written."""
  bad = []
  for dotted, ok, rule in _RULES:
    node = config
    for key in dotted.split("."):
      node = node[key]
    if not ok(node):
      bad.append(f"--config.{dotted}={node!r} must be {rule}")
  if config.model.quantize and config.train.mode != "lora":
    bad.append(f"--config.model.quantize={config.model.quantize!r} needs --config.train.mode=lora (a quantized base is frozen)")
  layers = _bertscore_layers(config.eval.bertscore_model)
  if layers is not None and config.eval.bertscore_layer > layers:  # else a traceback after all the training
    bad.append(f"--config.eval.bertscore_layer={config.eval.bertscore_layer} must be <= {layers}, the layers of "
               f"{config.eval.bertscore_model}")
  if bad:
    raise ValueError("bad config: " + "; ".join(bad))


def vatika_llama3_8b(experiments: tuple[str, ...]) -> ml_collections.ConfigDict:
  """The real experiment: Llama-3.1-8B (local HF dir), the VATIKA files, curated vLLM-teacher data.

  LoRA r=16, alpha=32 on all seven projections, bf16 base with fp32 adapters. The paper's exact
  optimiser settings could not be checked offline; learning rate, steps and batch below are common
  LoRA SFT values: change them per run with --config.*.
  """
  c = default_config()
  c.model.preset = "llama3_8b"  # shapes for `plan` when hf_path is not on this machine
  c.model.hf_path = "/models/Meta-Llama-3.1-8B-Instruct"  # local HF directory (config.json, safetensors)
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "bfloat16"
  c.model.remat = "full"  # 2048-token rows on 16-80 GB devices
  c.tokenizer.path = "/models/Meta-Llama-3.1-8B-Instruct"  # its tokenizer (chat template included)
  vatika_files(c.data)  # data.root (VATIKA files, not bundled) -> data.train, val, test1, test2
  # gen's output: `python -m gen curate --config=configs/gen/llama70b_phi4_vllm.py` writes <gen_dir>/curated/
  c.data.gen_dir = VATIKA_WORKDIR + "/gen"  # gen's out_dir; M2 and M3 read <gen_dir>/curated/synthetic.jsonl
  c.data.synthetic = _one_file_under(c.data.get_ref("gen_dir"), "curated/synthetic.jsonl")
  c.data.seq_len = 2048
  c.lora.rank = 16
  c.lora.alpha = 32.0
  c.lora.dropout = 0.05
  # Weights, adapters and moments sharded over every device: fits every target of `plan` (16 GB v5e chips
  # included). On 80 GB GPUs --config.mesh.data=-1 --config.mesh.fsdp=1 fits too and gathers no weights.
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.train.num_steps = 600
  c.train.batch_size = 32
  c.train.grad_accum = 1
  c.train.learning_rate = 2e-4
  c.train.warmup_steps = 30
  c.train.weight_decay = 0.0
  c.train.eval_every_steps = 100  # val loss on the VATIKA val split
  c.checkpoint.every_steps = 100
  c.checkpoint.keep = 3
  c.run.experiments = experiments
  c.run.stage2_steps = 300
  c.run.export = experiments[-1]
  c.eval.max_new_tokens = 128
  c.eval.batch_size = 32
  c.eval.bertscore_model = "/models/bert-base-multilingual-cased"  # layer 9 for Hindi
  return c


def _one_file_under(dir_ref: config_dict.FieldReference, name: str) -> config_dict.FieldReference:
  """A tuple-typed field `(<dir>/name,)` computed when read, so it follows an override of the directory key.
  ml_collections' own lazy-op mechanism (what `ref + "/x"` builds for a str), with a tuple result."""
  return config_dict.FieldReference((), field_type=tuple,
                                    op=config_dict.config_dict._Op(lambda _, d: (f"{d}/{name}",), [dir_ref]))


def vatika_files(data: ml_collections.ConfigDict, root: str = VATIKA_ROOT) -> None:
  """Add `data.root` and make data.train/val/test1/test2 follow it: `--config.data.root=/x` reads /x/train.json,
  /x/val.json, ...; a split given on its own (`--config.data.val=...`) wins over the root. Used by the 8B configs
  and the gen configs, so teachers and student read the same files."""
  data.root = root  # directory of the VATIKA files train.json, val.json, test1.json, test2.json
  ref = data.get_ref("root")
  data.train = _one_file_under(ref, "train.json")
  for split in VATIKA_SPLITS[1:]:
    data[split] = ref + f"/{split}.json"


def with_overrides(config: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """A copy of config with dotted keys overridden ({"train.batch_size": 8}); the original stays as it is."""
  c = copy.deepcopy(config)
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = c
    for key in parents:
      node = node[key]
    node[leaf] = value
  return c


def load(path: str | Path, **overrides) -> ml_collections.ConfigDict:
  """get_config() of a config file with dotted-key overrides: what `--config=PATH --config.key=value` gives
  the commands, for scripts, notebooks and tests."""
  spec = importlib.util.spec_from_file_location(f"hinqa_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return with_overrides(module.get_config(), **overrides)

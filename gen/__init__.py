"""The synthetic-data stage: teachers write Hindi QA pairs from training contexts, curation filters them.

    from gen import synthesize, curate
    summary = synthesize(config, shard=(0, 1))   # <out_dir>/<teacher>.jsonl per teacher
    report = curate(config)                      # <out_dir>/curated/{synthetic,rejected}.jsonl, report.{json,md}

Configs in configs/gen/ start from `default_config()` and add teachers made by `teacher(...)`.
The two functions shadow their modules' names on the package: reach the modules' other contents
with `from gen.curate import curate_records` (or importlib.import_module("gen.curate")).
"""
from __future__ import annotations

import ml_collections

from gen.curate import curate
from gen.synthesize import synthesize

__all__ = ["curate", "default_config", "synthesize", "teacher"]


def teacher(backend: str, model: str, **overrides) -> ml_collections.ConfigDict:
  """One teacher's section; every backend's keys exist so command-line overrides always resolve."""
  t = ml_collections.ConfigDict()
  t.backend = backend  # vllm | openai | jax
  t.model = model  # local checkpoint dir (vllm, jax) or the served model name (openai)
  t.temperature = 0.7  # sampling temperature (0 = greedy)
  t.top_p = 0.95  # nucleus sampling mass
  t.top_k = 0  # top-k cut-off; 0 = off
  t.max_tokens = 1024  # generation budget per prompt
  t.seed = 0  # sampling seed (each batch derives its own from it and the context ids)
  t.batch_size = 16  # prompts per generate call (and per resumable append)
  t.structured = ""  # "" | json_schema | json_object: constrained JSON output (vllm: json_schema)
  t.max_model_len = 0  # context window; 0 = the model's own (vllm, jax); longer prompts are skipped
  t.tensor_parallel_size = 1  # vllm: GPUs per model replica
  t.dtype = "bfloat16"  # vllm: weight and activation dtype
  t.gpu_memory_utilization = 0.9  # vllm: share of GPU memory for weights and KV cache
  t.base_url = ""  # openai: e.g. http://host:8000/v1 (vllm serve) or a hosted API
  t.api_key_env = ""  # openai: NAME of the environment variable holding the key; "" = no auth
  t.concurrency = 8  # openai: requests in flight
  t.timeout_s = 120.0  # openai: per-request timeout
  t.max_tries = 5  # openai: attempts before the item counts as failed
  t.backoff_s = 1.0  # openai: first retry delay, doubled each try (Retry-After wins when longer)
  t.max_backoff_s = 60.0  # openai: cap on one retry delay
  for key, value in overrides.items():
    if key not in t:
      raise KeyError(f"teacher(): unknown key {key!r}")
    setattr(t, key, value)
  return t


def default_config() -> ml_collections.ConfigDict:
  """Every key of a gen config; configs/gen/*.py fill in teachers and paths."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # few-shot example draws and record order
  c.out_dir = "runs/gen"  # teacher outputs; curation writes to <out_dir>/curated unless curate.out_dir
  c.teachers = ml_collections.ConfigDict()  # name -> teacher(...) section; run in name order

  c.data = ml_collections.ConfigDict()
  c.data.train = ("data/vatika_mini/train.json",)  # contexts and few-shot pool (any read_records format)
  c.data.val = "data/vatika_mini/val.json"  # held out: decontamination
  c.data.test1 = "data/vatika_mini/test1.json"  # held out: decontamination
  c.data.test2 = "data/vatika_mini/test2.json"  # held out: decontamination

  c.prompt = ml_collections.ConfigDict()
  c.prompt.num_examples = 3  # k few-shot QA examples from the same domain
  c.prompt.num_pairs = 5  # N new pairs asked per prompt
  c.prompt.show_existing = True  # list the context's existing questions as "do not repeat"
  c.prompt.max_existing = 10  # at most this many of them

  c.synth = ml_collections.ConfigDict()
  c.synth.only = ()  # teacher names to run; empty = all
  c.synth.samples_per_context = 1  # prompts per context (different examples and seed each)
  c.synth.max_contexts = 0  # 0 = all contexts; else the first N (before sharding)
  c.synth.retry_failed = True  # a rerun retries units whose generation failed (not garbage/too long)
  c.synth.max_failure_rate = 0.5  # a teacher whose requests failed more often this run stops it with an error
  c.synth.allow_empty = False  # True: a teacher with no pair, and curating none, are reported, not errors
  c.synth.progress = True  # tqdm progress bars

  c.curate = ml_collections.ConfigDict()
  c.curate.out_dir = ""  # "" = <out_dir>/curated
  c.curate.min_devanagari_ratio = 0.8  # share of letters that are Devanagari, question and answer each
  c.curate.min_question_tokens = 3  # shorter questions: too_short
  c.curate.min_answer_tokens = 3  # shorter answers: too_short (the task wants full sentences)
  c.curate.max_question_tokens = 40  # longer: too_long
  c.curate.max_answer_tokens = 80  # longer: too_long
  c.curate.ngram = 3  # character n-gram size of near-duplicate keys
  c.curate.near_dup_threshold = 0.8  # Jaccard of loose question keys at/above which two questions match
  c.curate.contam_question_threshold = 0.7  # same, against held-out questions: contaminated
  c.curate.contam_ngram = 8  # word n-grams shared with held-out text (and absent from own context): contaminated
  c.curate.known_entities = ("वाराणसी", "काशी", "बनारस")  # names every context implies (VATIKA's city): never unsupported_entity
  c.curate.grounding_threshold = 0.5  # min share of the answer's content stems in its best 3-sentence window
  c.curate.new_content_threshold = 0.5  # min share of the answer's words beyond the question's found in the context
  c.curate.minhash_threshold = 0.8  # corpus-wide near-duplicates: Jaccard of pair char n-grams (MinHash LSH)
  c.curate.minhash_ngram = 5  # character n-gram size of the MinHash keys
  c.curate.agree_threshold = 0.6  # F1 of two answers beyond their questions' words at/above which they agree
  c.curate.conflict_policy = "context"  # context (answers whose differing facts are in it survive) | drop_all
  c.curate.against_original = True  # duplicates of / conflicts with the original training QA are dropped
  c.curate.examples_per_reason = 3  # examples per rejection reason in the report
  c.curate.judge = ml_collections.ConfigDict()
  c.curate.judge.enabled = False  # LLM-judge filter on the pairs that passed everything else
  c.curate.judge.teacher = ""  # default judge (a teacher name) for teachers not listed in judges
  c.curate.judge.judges = ""  # "teacher:judge,..." per teacher; a teacher judging itself is an error
  c.curate.judge.on_parse_failure = "keep"  # keep | drop a pair whose verdict cannot be read
  c.curate.judge.temperature = 0.0  # judge sampling temperature
  c.curate.judge.max_tokens = 128  # judge budget per pair
  return c

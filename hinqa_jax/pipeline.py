"""The commands behind `python -m hinqa_jax`: prepare, train, evaluate, export, convert, and run (the stage graph).

Every step writes under the workdir and is skipped when its output exists for the same inputs: a
packed data dir is keyed by the hash of what produced it, a stage by its config (a changed config
re-runs the stage and what depends on it); stages.py holds the keys and the markers.

Every command runs the same on 1 process or N, on the mesh of config.mesh: training, evaluation and
export are SPMD over all processes; process 0 alone writes shared files and decides what is skipped,
the others wait for it (distributed.main_only), as distributed.py describes.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from pathlib import Path

import jax

import gen
from hinqa_jax import (bootstrap, distributed, evaluate as evaluate_lib, experiments, hf, locks, model, packing, report,
                       sharding, train as train_lib, uncertainty, validation)
from hinqa_jax.config import with_overrides
from hinqa_jax.examples import build_bundled_tokenizer
from hinqa_jax.files import file_digest
from hinqa_jax.records import read_records
from hinqa_jax.stages import cached, content_hash, data_key, plain, portable, stage_key, weights_digest
from hinqa_jax.tokenizer import load_tokenizer, tokenizer_hash

log = logging.getLogger(__name__)


def prepare(config, workdir: str | os.PathLike, files: tuple[str, ...] | None = None) -> dict:
  """Pack config.data.train (+ synthetic) into WORKDIR/data/<key>/; reused when the key matches."""
  files = tuple(files if files is not None else tuple(config.data.train) + tuple(config.data.synthetic))
  key = data_key(config, files)
  out = Path(workdir) / "data" / key

  def pack() -> None:
    with locks.hold(out.parent, f"prepare {key}", name=f".{key}.lock"):  # one writer of this data at a time
      if not (out / "manifest.json").exists():  # the caller's config stays as it is (every process's the same)
        packing.prepare(with_overrides(config, **{"data.train": files, "data.synthetic": ()}), out)

  distributed.main_only(f"prepare {key}", pack)
  manifest = json.loads((out / "manifest.json").read_text())
  return {"data_dir": str(out), **{k: manifest[k] for k in manifest if k in (
      "num_examples", "num_rows", "packing_efficiency", "seq_len", "tokenizer_hash", "loss_cap")}}


def train(config, workdir: str | os.PathLike, *, stage: str | None = None, files: tuple[str, ...] | None = None,
          init_from: str | None = None, mode: str | None = None, progress: bool = True) -> dict:
  """One stage (config.train.stage) on the packed config data; resumes by itself."""

  prepared = prepare(config, workdir, files)
  dataset = packing.PackedDataset(prepared["data_dir"])
  vocab = len(load_tokenizer(config.tokenizer.path))
  stage = stage or config.train.stage
  config = validation.with_epochs(config, dataset.num_rows, stage)
  val = None
  if config.train.eval_every_steps > 0:  # packed as the training data is (same template, length, mask)
    val = packing.PackedDataset(prepare(copy.deepcopy(config), workdir, (config.data.val,))["data_dir"])
  out = train_lib.run_stage(config, workdir, stage, dataset, init_from=init_from,
                            mode=mode or config.train.mode, vocab_size=vocab, progress=progress, val_dataset=val)
  return {k: v for k, v in out.items() if k in ("stage", "steps", "final", "checkpoints")}


_with = with_overrides  # the commands' short name for it


# ----------------------------------------------------------------------------- the pieces of `run`
def _tokenizer(config, workdir: Path) -> str:
  if config.tokenizer.path:
    return str(config.tokenizer.path)
  out = workdir / "tokenizer"

  def build() -> None:
    if not (out / "tokenizer.json").exists():
      build_bundled_tokenizer(train_path=config.data.train[0], out_dir=out)

  distributed.main_only("tokenizer", build)
  return str(out)


def _full_stage(config, workdir: Path, name: str, examples_fn, seq_len: int, steps: int, seed: int) -> str:
  """Train all weights on custom examples (base pretraining, a teacher) and export them as a HF dir."""
  c = _with(config, **{"train.num_steps": steps, "data.seq_len": seq_len, "seed": seed,
                       "train.learning_rate": config.pretrain.learning_rate,
                       "train.batch_size": config.pretrain.batch_size, "train.warmup_steps": max(steps // 20, 1),
                       "train.mode": "full", "train.num_epochs": 0.0, "train.eval_every_steps": 0,
                       "train.keep_best": False, "model.quantize": ""})  # all weights train: none quantized
  hf_dir = workdir / name / "hf"

  def go():
    data_dir = workdir / "data" / f"{name}-{content_hash(seq_len)}"
    distributed.main_only(f"pack {name}", lambda: bootstrap.write_examples(examples_fn(), data_dir, c.tokenizer.path,
                                                                         seq_len))
    vocab = len(load_tokenizer(c.tokenizer.path))
    out = train_lib.run_stage(c, workdir, name, packing.PackedDataset(data_dir), mode="full", vocab_size=vocab)
    bootstrap.export_full(out, hf_dir, c.tokenizer.path)
    return {"hf_dir": str(hf_dir), "final_loss": out["final"].get("loss")}

  cached(workdir / name, stage_key(c, {"stage": name, "files": file_digest(config.data.train[0])}, workdir), go)
  return str(hf_dir)  # not the cached result's path: the workdir may have moved since


def _base(config, workdir: Path) -> str:
  """The frozen base: config.model.hf_path, or (pretrain.steps > 0) a small model pretrained here."""
  if config.pretrain.steps <= 0:
    return config.model.hf_path
  records = [r for f in config.data.train for r in read_records(f, strict=False)]
  tok = load_tokenizer(config.tokenizer.path)
  c = _with(config, **{"model.hf_path": ""})
  return _full_stage(c, workdir, "base", lambda: bootstrap.corpus_examples(tok, records, config.data.seq_len),
                     config.data.seq_len, config.pretrain.steps, config.seed)


def _synthetic(config, workdir: Path) -> list[str]:
  """Curated synthetic JSONL files: given (source=files) or made by small teachers (source=teachers)."""
  if config.synthetic.source == "files":
    return list(config.data.synthetic)
  if config.synthetic.source != "teachers":
    raise ValueError(f"synthetic.source must be files or teachers, got {config.synthetic.source!r}")

  gen_cfg = copy.deepcopy(config.gen)
  records = [r for f in config.data.train for r in read_records(f, strict=False)]
  tok = load_tokenizer(config.tokenizer.path)
  with gen_cfg.unlocked():
    gen_cfg.out_dir = str(workdir / "gen")
    gen_cfg.synth.allow_empty = True  # tiny CPU teachers may write nothing: M2/M3 then say "not run"
    gen_cfg.data.train = tuple(config.data.train)
    for split in ("val", "test1", "test2"):
      gen_cfg.data[split] = config.data[split]
    for i, name in enumerate(config.synthetic.teachers):
      examples = lambda s=i: bootstrap.teacher_examples(tok, records, gen_cfg, config.synthetic.teacher_seq_len,
                                                        config.synthetic.samples_per_context, config.seed + 100 + s)
      hf_dir = _full_stage(config, workdir, name, examples,
                           config.synthetic.teacher_seq_len, config.synthetic.teacher_steps, config.seed + 100 + i)
      gen_cfg.teachers[name] = gen.teacher("jax", hf_dir, temperature=config.synthetic.temperature, seed=i,
                                           max_tokens=config.synthetic.max_tokens, batch_size=8)
  weights = [weights_digest(t.model) for t in gen_cfg.teachers.values()]
  key = content_hash({"teachers": weights, "gen": portable(plain(gen_cfg), workdir)})
  curated = workdir / "gen" / "curated" / "synthetic.jsonl"

  def go():  # the teachers generate on process 0's devices alone; gen writes its files unaware of processes
    gen.synthesize(gen_cfg)
    curation = gen.curate(gen_cfg)
    return {"curated": str(curated), "report": {k: curation.get(k) for k in ("totals", "per_teacher") if k in curation}}

  cached(workdir / "gen", key, lambda: distributed.main_only("synthesize", go))
  return [str(curated)]


# ----------------------------------------------------------------------------- a trained LoRA stage on the mesh
def make_mesh(config):
  """The mesh of config.mesh over every device of every process, or a clear error before any work."""
  try:
    return sharding.make_mesh(dict(config.mesh))
  except ValueError as err:
    raise ValueError(f"config.mesh does not fit this job's {jax.device_count()} device(s) ({jax.process_count()} "
                     f"process(es) x {jax.local_device_count()}): {err}") from None


def _made_here(config, workdir: Path):
  """config pointing at the tokenizer and base that `run` made in workdir, where the config makes them."""
  c = copy.deepcopy(config)
  if not c.tokenizer.path:
    c.tokenizer.path = str(workdir / "tokenizer")
  if c.pretrain.steps > 0 and not c.model.hf_path:
    c.model.hf_path = str(workdir / "base" / "hf")
  for what, path, needed in (("tokenizer", c.tokenizer.path, "tokenizer.json"), ("base", c.model.hf_path, "config.json")):
    if path and not (Path(path) / needed).exists():
      raise FileNotFoundError(f"{what} {path}: no {needed} there (run `python -m hinqa_jax run` on this workdir "
                              f"first, or set config.{'tokenizer.path' if what == 'tokenizer' else 'model.hf_path'})")
  return c


def _splits(config) -> dict[str, str]:
  return {s: config.data[s] for s in ("val", "test1", "test2")}


def evaluate(config, workdir: str | os.PathLike, stage: str | None = None, *, out_dir=None, base=None,
             mesh=None) -> dict:
  """Scores of a LoRA stage's adapters (default config.train.stage) on val, test1 and test2, on the mesh
  of config.mesh (every process calls it; process 0 writes WORKDIR/eval/<stage>/)."""
  workdir = Path(workdir)
  config = _made_here(config, workdir)
  stage = stage or config.train.stage
  mesh = mesh or make_mesh(config)
  tok = load_tokenizer(config.tokenizer.path)
  if base is None:
    cfg, params, adapters, lcfg = evaluate_lib.load_stage(config, workdir, stage, mesh, len(tok))
  else:  # `run` evaluates several stages on one base
    (cfg, params), (adapters, lcfg) = base, evaluate_lib.load_adapters(workdir / stage, base[0], mesh=mesh)
  return evaluate_lib.evaluate_all(_splits(config), out_dir or workdir / "eval" / stage, cfg, params, tok,
                                   adapters=adapters, lora_cfg=lcfg, eval_cfg=config.eval, mesh=mesh,
                                   template=config.data.template, max_prompt_tokens=config.data.seq_len)


def export(config, workdir: str | os.PathLike, stage: str | None = None, out_dir=None, mesh=None,
           overwrite: bool = False) -> dict:
  """Merged HF weights and a PEFT adapter of a stage, with the tokenizer; rank/alpha/targets from the checkpoint.

  Every process calls it on the mesh of config.mesh; weights are gathered tensor by tensor and written by
  process 0 (hf.save_hf). out_dir (default WORKDIR/export/<stage>, the run's own, replaced on a re-export):
  a directory of the user's whose merged/ or peft/ already holds files is refused unless `overwrite`,
  before any work, so nothing of theirs is deleted."""

  workdir = Path(workdir)
  config = _made_here(config, workdir)
  stage = stage or config.train.stage
  out = Path(out_dir or workdir / "export" / stage)
  if out_dir and not overwrite:
    taken = [str(d) for d in (out / "merged", out / "peft") if d.exists() and any(d.iterdir())]
    if taken:
      raise FileExistsError(f"export: {' and '.join(taken)} already hold files; choose another --hf_dir or pass "
                            f"--overwrite to replace them")
  mesh = mesh or make_mesh(config)
  cfg, params, adapters, lcfg = evaluate_lib.load_stage(config, workdir, stage, mesh,
                                                       len(load_tokenizer(config.tokenizer.path)))
  hf.save_hf(out / "merged", cfg, params, adapters=adapters, lora_cfg=lcfg, tokenizer_dir=config.tokenizer.path)
  base = config.model.hf_path or None  # a local base as an absolute path: the adapter loads from anywhere
  if base and Path(base).is_dir():
    base = str(Path(base).resolve())
  hf.save_peft(out / "peft", cfg, adapters, lcfg, base_model_name_or_path=base)
  return {"merged": str(out / "merged"), "peft": str(out / "peft"),
          "lora": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(lcfg).items()}}


def convert(config, workdir: str | os.PathLike, hf_dir: str | None = None) -> dict:
  """Validate a HF LLaMA dir and rewrite it sharded in config.model.param_dtype at WORKDIR/converted.

  Read as training reads the base: sharded over config.mesh, each process reading only its devices'
  slices (an 8B model never whole on one host or device); every process takes part in the write."""
  src = hf_dir or config.model.hf_path
  if not src:
    raise ValueError("convert: give --hf_dir or config.model.hf_path")
  c = _with(config, **{"model.hf_path": str(src)})
  cfg = train_lib.model_config(c)
  params = train_lib.load_base(c, cfg, make_mesh(c))
  out = hf.save_hf(Path(workdir) / "converted", cfg, params, tokenizer_dir=src)
  return {"source": src, "out": str(out), "parameters": model.count_params(params), "dtype": cfg.param_dtype}


# ----------------------------------------------------------------------------- run: the experiments' stage graph
def _train_runs(config, workdir: Path, runs: dict[str, dict]) -> dict[str, str]:
  """Every stage of the runs trained once (M1, shared by M2 and the per-teacher and ratio runs, once), each
  cached under its key (config, data bytes, the stage it starts from, the base's weights). Returns stage -> key."""
  stage_keys: dict[str, str] = {}
  for r in runs.values():
    for st in r["stages"]:
      if st["name"] in stage_keys:
        continue
      c = _with(config, **{"train.num_steps": st["steps"], "train.num_epochs": st["epochs"],
                           "train.stage": st["name"], "seed": st["seed"]})
      prev = stage_keys.get(st["init_from"]) if st["init_from"] else None
      key = stage_key(c, {"files": {f: file_digest(f) for f in st["files"]}, "after": prev,
                          "base": weights_digest(config.model.hf_path)}, workdir)
      init = str(validation.selected_checkpoints(workdir / st["init_from"])) if st["init_from"] else None
      cached(workdir / st["name"], key, lambda c=c, st=st, init=init: train(
          c, workdir, stage=st["name"], files=tuple(st["files"]), init_from=init))
      stage_keys[st["name"]] = key
  return stage_keys


def _evaluate_runs(config, workdir: Path, runs: dict[str, dict], stage_keys: dict[str, str], mesh):
  """(run -> split -> scores, run -> evaluation key): each run's last stage evaluated into WORKDIR/eval/<run>,
  cached on that stage's key, the eval settings (not the analysis's) and the split files' bytes."""
  vocab = len(load_tokenizer(config.tokenizer.path))
  bases: dict = {}  # a random base (no hf_path) depends on the seed; a loaded one does not

  def base(c):  # read once per base, already sharded, by the first evaluation that is not up to date
    base_id = config.model.hf_path or c.seed
    if base_id not in bases:
      cfg = train_lib.model_config(c, vocab)
      bases[base_id] = (cfg, train_lib.load_base(c, cfg, mesh, cache_dir=workdir / "base_cache"))
    return bases[base_id]

  eval_plain = {k: v for k, v in plain(config)["eval"].items()
                if k not in ("n_bootstrap", "n_trials", "significance_seed")}
  run_results, eval_keys = {}, {}
  for name, r in runs.items():
    last, c = r["stages"][-1]["name"], _with(config, seed=r["seed"])
    eval_keys[name] = content_hash({"stage": stage_keys[last], "eval": eval_plain, "splits": {
        s: file_digest(p) for s, p in _splits(config).items()}})
    run_results[name] = cached(workdir / "eval" / name, eval_keys[name], lambda c=c, name=name, last=last: evaluate(
        c, workdir, last, out_dir=workdir / "eval" / name, base=base(c), mesh=mesh))
  return run_results, eval_keys


def _provenance(config, workdir: Path, stage_keys: dict[str, str], synthetic: list[str]) -> dict:
  """What the results came from: the config's, tokenizer's, stages' and data files' hashes, the base, the seeds."""
  return portable({
      "config_hash": content_hash(portable(plain(config), workdir)), "tokenizer_hash": tokenizer_hash(config.tokenizer.path),
      "base": config.model.hf_path, "stage_keys": stage_keys, "seeds": list(experiments.run_seeds(config)),
      "data": {s: file_digest(p) for s, p in _splits(config).items()} |
              {f: file_digest(f) for f in list(config.data.train) + synthetic}}, workdir)


def run(config, workdir: str | os.PathLike) -> dict:
  """The whole pipeline: tokenizer, base, synthetic data, the experiments' stages (once per run.seeds),
  evaluation, uncertainty (CIs, comparisons), report, export."""

  workdir = Path(workdir)
  mesh = make_mesh(config)  # a mesh that does not fit the devices fails here, before any work
  distributed.main_only("workdir", lambda: workdir.mkdir(parents=True, exist_ok=True))
  experiments.check_synthetic_files(config)  # before any work: M2/M3 must not find a path no stage wrote
  config = copy.deepcopy(config)
  config.tokenizer.path = _tokenizer(config, workdir)
  config.model.hf_path = _base(config, workdir)
  synthetic = _synthetic(config, workdir)
  subsets = distributed.main_only("subsets", lambda: experiments.synthetic_subsets(config, workdir, synthetic))
  runs, skipped = experiments.runs_with_data(experiments.fan_out(experiments.experiment_stages(config, subsets),
                                                                 experiments.run_seeds(config)))
  stage_keys = _train_runs(config, workdir, runs)
  run_results, eval_keys = _evaluate_runs(config, workdir, runs, stage_keys, mesh)
  splits = tuple(_splits(config))

  def analyse() -> dict:  # process 0: every run's saved predictions (a cached evaluation has only its files)
    predictions = {name: {s: evaluate_lib.read_predictions(workdir / "eval" / name, s) for s in splits} for name in runs}
    return uncertainty.summarize(runs, run_results, predictions, config.eval, splits)

  analysis = cached(workdir / "analysis", content_hash({"evals": eval_keys, "eval": plain(config)["eval"]}),
                    lambda: distributed.main_only("analysis", analyse))
  results = analysis["results"]
  for exp, note in skipped.items():
    results[exp] = {s: {"n": 0, "note": note} for s in splits}
  provenance = _provenance(config, workdir, stage_keys, synthetic)
  stage_dirs = {name: str(workdir / name) for name in ["base", *config.synthetic.teachers, *stage_keys]
                if (workdir / name / "metrics.jsonl").exists()}
  out = distributed.main_only("report", lambda: report.write_report(workdir, results, provenance, stage_dirs,
                                                                   comparisons=analysis["comparisons"]))
  exported = next((r for r in runs.values() if r["experiment"] == config.run.export), None)
  if config.run.export and exported:  # the first seed's run of that experiment
    out["export"] = export(_with(config, seed=exported["seed"]), workdir, exported["stages"][-1]["name"], mesh=mesh)
  return out

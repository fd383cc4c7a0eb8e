"""Command line: `python -m hinqa_jax COMMAND --config=configs/x.py --workdir=runs/x [--config.key=value]`.

Commands: run (the whole pipeline of the config), prepare, train, evaluate, export, convert, plan.
Only flag parsing lives here; each command is one library call a notebook can make too. What imports jax
waits until the command is known: `--help` stays quick, the malloc setting of `train` and `run`
(cpu_tuning.keep_freed_memory) comes before jax starts its threads, and `plan` never imports the pipeline.
"""
from __future__ import annotations

import json
import logging
import sys

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

from hinqa_jax import cli, config as config_lib, cpu_tuning
from hinqa_jax.files import write_atomic

COMMANDS = ("run", "prepare", "train", "evaluate", "export", "convert", "plan")
# What each command does, its flags beside --config, and the config sections it reads (`COMMAND --help`).
_HELP = {
    "run": ("the whole pipeline of the config: tokenizer, base, synthetic data, stages, evaluation, report, export",
            ("workdir",), ()),
    "prepare": ("tokenize and pack data.train (+ data.synthetic) into WORKDIR/data/<key>/", ("workdir",),
                ("data", "tokenizer")),
    "train": ("one LoRA (or full) stage, train.stage, on the packed data; resumes by itself", ("workdir",),
              ("seed", "model", "tokenizer", "data", "lora", "mesh", "train", "checkpoint")),
    "evaluate": ("score a stage's adapters on data.val, test1, test2", ("workdir", "stage"),
                 ("model", "tokenizer", "data", "mesh", "eval", "pretrain")),
    "export": ("merged HF weights and a PEFT adapter of a stage", ("workdir", "stage", "hf_dir", "overwrite"),
               ("model", "tokenizer", "mesh", "pretrain")),
    "convert": ("validate a HF LLaMA dir and rewrite it in model.param_dtype at WORKDIR/converted",
                ("workdir", "hf_dir"), ("model", "mesh")),
    "plan": ("compile the train step and generate for a target with its real compiler: memory, fit, FLOPs",
             ("target", "json", "loss_cap", "workdir"), ("model", "data", "lora", "mesh", "train", "eval")),
}

config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py)", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for everything the run writes")
flags.DEFINE_string("hf_dir", None, "convert: a HF LLaMA directory to import; export: output dir override")
flags.DEFINE_bool("overwrite", False, "export: replace merged/ and peft/ in an --hf_dir that already has them")
flags.DEFINE_string("stage", None, "evaluate/export: which stage's adapters (default: the config's last)")
flags.DEFINE_string("target", None, "plan: what to compile for: a TPU slice (v5e-8, v5e-256, v5p-8, v6e-8, v4-8, "
                    "v5e-1, v5e-4), a GPU node (h100x8, h100x4, h100x1, a100-80x8, a100-40x1, l4x1) or cpu-N")
flags.DEFINE_string("json", None, "plan: also write the plan as JSON to this path")
flags.DEFINE_integer("loss_cap", None, "plan: the head's positions per row (default: the prepared data's in "
                     "--workdir, else every position)")
FLAGS = flags.FLAGS


def _command_help(command: str, argv: list[str]) -> str:
  """`python -m hinqa_jax COMMAND --help [--config=FILE]`: the keys with their values in FILE (else the default
  config) and the comments that declare them in hinqa_jax/config.py (then FILE)."""
  what, own_flags, sections = _HELP[command]
  path = cli.config_file(argv)
  config = config_lib.load(path) if path else config_lib.default_config()
  return cli.command_help("hinqa_jax", command, what, own_flags, sections, config, path, [config_lib.__file__])


def main(argv):
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax's INFO lines; this also sets the root logger's level
  logging.getLogger("hinqa_jax").setLevel(logging.INFO)  # so our own progress lines ("m1: up to date, skipped") stay
  if len(argv) != 2 or argv[1] not in COMMANDS:
    cli.fail(f"usage: python -m hinqa_jax {{{'|'.join(COMMANDS)}}} --config=... --workdir=... (COMMAND --help: its keys)")
  command, config = argv[1], FLAGS.config
  if command in ("train", "run"):  # before jax starts its threads (cpu_tuning.py: training steps only)
    cpu_tuning.keep_freed_memory()
  if config is None:
    cli.fail("--config is required")
  try:
    config_lib.check(config)
  except ValueError as err:
    cli.fail(str(err))
  if command == "plan":
    from hinqa_jax import plan, stages, targets  # not pipeline: plan runs where gen's and metrics' deps are not installed
    if not FLAGS.target:
      cli.fail(f"plan needs --target=NAME: {', '.join(targets.TARGETS)} or cpu-N (N fake CPU devices)")
    loss_cap = FLAGS.loss_cap
    if loss_cap is None and FLAGS.workdir:
      loss_cap = stages.prepared_loss_cap(config, FLAGS.workdir)
    result = plan.plan(config, FLAGS.target, loss_cap=loss_cap)
    print(plan.report(result))
    if FLAGS.json:
      write_atomic(FLAGS.json, json.dumps(result, indent=2, default=str))
    return
  if not FLAGS.workdir:
    cli.fail("--workdir is required")
  from hinqa_jax import distributed, pipeline  # jax, and gen's and metrics' dependencies: only now
  distributed.initialize()
  with distributed.failing_together():  # an error on any process stops every process, each saying it
    pipeline.make_mesh(config)  # before any work: the mesh fits this job's devices ...
    distributed.check_shared_dir(FLAGS.workdir)  # ... and every process sees the same workdir
    if command == "run":
      result = pipeline.run(config, FLAGS.workdir)
    elif command == "prepare":
      result = pipeline.prepare(config, FLAGS.workdir)
    elif command == "train":
      result = pipeline.train(config, FLAGS.workdir)
    elif command == "evaluate":
      result = pipeline.evaluate(config, FLAGS.workdir, stage=FLAGS.stage)
    elif command == "export":
      result = pipeline.export(config, FLAGS.workdir, stage=FLAGS.stage, out_dir=FLAGS.hf_dir, overwrite=FLAGS.overwrite)
    else:
      result = pipeline.convert(config, FLAGS.workdir, hf_dir=FLAGS.hf_dir)
  if result is not None and distributed.is_main():
    print(json.dumps(result, indent=2, ensure_ascii=False, default=str))


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every save at INFO through absl
  app.run(main, flags_parser=cli.flags_parser("hinqa_jax", COMMANDS, _command_help))

"""Command line: `python -m hinqa_jax COMMAND --config=configs/x.py --workdir=runs/x [--config.key=value]`.

Commands: run (the whole pipeline of the config), prepare, train, evaluate, export, convert, plan.
Only flag parsing lives here; each command is one library call a notebook can make too.
"""
from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

COMMANDS = ("run", "prepare", "train", "evaluate", "export", "convert", "plan")

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


def main(argv):
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m hinqa_jax {{{'|'.join(COMMANDS)}}} --config=... --workdir=...")
  command, config = argv[1], FLAGS.config
  if command in ("train", "run"):  # before jax starts its threads (hostmem.py: training steps only)
    from hinqa_jax import hostmem
    hostmem.keep_freed_memory()
  if config is None:
    raise app.UsageError("--config is required")
  from hinqa_jax.config import check
  try:
    check(config)
  except ValueError as err:
    raise app.UsageError(str(err)) from None
  if command == "plan":
    from hinqa_jax import pipeline, plan, targets
    if not FLAGS.target:
      raise app.UsageError(f"plan needs --target=NAME: {', '.join(targets.TARGETS)} or cpu-N (N fake CPU devices)")
    loss_cap = FLAGS.loss_cap
    if loss_cap is None and FLAGS.workdir:
      loss_cap = pipeline.prepared_loss_cap(config, FLAGS.workdir)
    result = plan.plan(config, FLAGS.target, loss_cap=loss_cap)
    print(plan.report(result))
    if FLAGS.json:
      from hinqa_jax.files import write_atomic
      write_atomic(FLAGS.json, json.dumps(result, indent=2, default=str))
    return
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required")
  from hinqa_jax import distributed, pipeline
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
  app.run(main)

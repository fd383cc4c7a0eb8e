"""python -m gen synthesize|curate --config=configs/gen/<x>.py [--shard=i/N] [--dry-run] [--config.key=value]

`curate --dry-run` writes nothing: it prints, for every filter, how many pairs it alone would drop and
how many it drops in pipeline order (with examples), and what each numeric threshold would drop at
other values, so thresholds can be tuned on one's own data before a real run.
"""
from __future__ import annotations

import json

import os

from absl import app, flags, logging
from ml_collections import config_flags

from hinqa_jax import cli, config as config_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "gen config file (configs/gen/*.py)", lock_config=True)
_SHARD = flags.DEFINE_string("shard", "0/1", "synthesize: this worker's share i/N of the contexts")
_DRY_RUN = flags.DEFINE_boolean("dry-run", False, "curate: print per-filter and per-threshold drop counts, write nothing")
flags.mark_flags_as_required(["config"])
COMMANDS = ("synthesize", "curate")
_HELP = {  # what each command does, its flags beside --config, the config sections it reads
    "synthesize": ("teachers write QA pairs from this shard's training contexts into <out_dir>/<teacher>.jsonl",
                   ("shard",), ("seed", "out_dir", "teachers", "data", "prompt", "synth")),
    "curate": ("merge every teacher's (shard) files, filter, write <out_dir>/curated/{synthetic,rejected}.jsonl",
               ("dry-run",), ("seed", "out_dir", "teachers", "data", "curate")),
}


def _command_help(command: str, argv: list[str]) -> str:
  """`python -m gen COMMAND --help [--config=FILE]`: the keys with their values in FILE (else the defaults) and
  the comments that declare them in gen/__init__.py (then FILE)."""
  import gen  # noqa: PLC0415 -- after flag parsing, as in main()
  what, own_flags, sections = _HELP[command]
  path = cli.config_file(argv)
  config = config_lib.load(path) if path else gen.default_config()
  return cli.command_help("gen", command, what, own_flags, sections, config, path,
                          [os.path.join(os.path.dirname(os.path.abspath(__file__)), "__init__.py"),
                           config_lib.__file__])  # data.root: hinqa_jax.config.vatika_files


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    cli.fail("usage: python -m gen synthesize|curate --config=configs/gen/<x>.py [--shard=i/N] [--dry-run] "
             "(COMMAND --help: its keys)")
  if _DRY_RUN.value and argv[1] != "curate":
    cli.fail("--dry-run applies to curate only")
  import gen  # noqa: PLC0415 -- after flag parsing, so --help stays fast
  logging.set_verbosity(logging.INFO)
  if argv[1] == "synthesize":
    result = gen.synthesize(_CONFIG.value, shard=_SHARD.value)
  else:
    result = gen.curate(_CONFIG.value, dry_run=_DRY_RUN.value)
    keys = ("totals", "dry_run", "conflicts", "parse") if _DRY_RUN.value else ("totals", "per_teacher", "agreement",
                                                                               "outputs")
    result = {k: result[k] for k in keys}
  print(json.dumps(result, ensure_ascii=False, indent=1, sort_keys=True))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser("gen", COMMANDS, _command_help))

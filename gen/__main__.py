"""python -m gen synthesize|curate --config=configs/gen/<x>.py [--shard=i/N] [--config.key=value]"""
from __future__ import annotations

import json

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "gen config file (configs/gen/*.py)", lock_config=True)
_SHARD = flags.DEFINE_string("shard", "0/1", "synthesize: this worker's share i/N of the contexts")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in ("synthesize", "curate"):
    raise app.UsageError("usage: python -m gen synthesize|curate --config=configs/gen/<x>.py [--shard=i/N]")
  import gen  # noqa: PLC0415 -- after flag parsing, so --help stays fast
  logging.set_verbosity(logging.INFO)
  if argv[1] == "synthesize":
    result = gen.synthesize(_CONFIG.value, shard=_SHARD.value)
  else:
    result = gen.curate(_CONFIG.value)
    result = {k: result[k] for k in ("totals", "per_teacher", "agreement", "outputs")}
  print(json.dumps(result, ensure_ascii=False, indent=1, sort_keys=True))


if __name__ == "__main__":
  app.run(main)

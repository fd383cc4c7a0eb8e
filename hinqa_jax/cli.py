"""What `python -m hinqa_jax` and `python -m gen` share around absl's flag parsing: `COMMAND --help` per
command (its flags and the config keys it reads, with their values and the comments that declare them), and
every bad flag, config file or config key as one line on stderr, exit status 2, before any real work."""
from __future__ import annotations

import os
import sys
from typing import Callable

from absl import flags


def fail(message: str) -> None:
  """One line on stderr and exit status 2 (absl's UsageError would print the whole flag list after it)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def config_file(argv: list[str]) -> str | None:
  return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)


def command_help(program: str, command: str, what: str, own_flags: tuple[str, ...], sections: tuple[str, ...],
                 config, config_path: str | None, comment_files: list[str]) -> str:
  """The text of `python -m PROGRAM COMMAND --help`: what it does, its flags, the config keys it reads."""
  from hinqa_jax.config import describe
  fl = flags.FLAGS
  lines = [f"python -m {program} {command} --config=FILE [flags] [--config.KEY=VALUE ...]", f"  {what}", "", "flags:"]
  lines += [f"  --{fl[name].name}: {fl[name].help}" for name in ("config", *own_flags)]
  lines += ["", f"config keys {command} reads, as set by {config_path or 'the default config'}:",
            describe(config, sections, [*comment_files, *([config_path] if config_path else [])])]
  return "\n".join(lines)


def flags_parser(program: str, commands: tuple[str, ...], help_text: Callable[[str, list[str]], str]):
  """A `flags_parser` for absl's app.run: `COMMAND --help` prints help_text(command, argv); a missing config
  file, an unknown flag or config key, or a value that does not parse is one line on stderr (exit 2)."""
  def parse(argv: list[str]) -> list[str]:
    command = next((a for a in argv[1:] if a in commands), None)
    if command and any(a in ("-h", "--help", "--helpshort") for a in argv):
      print(help_text(command, argv))
      sys.exit(0)
    path = config_file(argv)
    if path is not None and not os.path.isfile(path):
      fail(f"--config={path}: no such file (the configs are in configs/)")
    try:
      return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, OSError, TypeError, ValueError) as err:
      cause = err
      while cause.__cause__ is not None or cause.__context__ is not None:  # the config loader's own words
        cause = cause.__cause__ or cause.__context__
      bad = next((a for a in argv if a.startswith("--config.") and str(cause).strip("'\"") in a), None)
      what = (f"{bad.split('=')[0]}: no such config key" if isinstance(cause, (AttributeError, KeyError)) and bad
              else str(err).splitlines()[0])
      fail(f"{what} (python -m {program} COMMAND --help lists the flags and config keys)")
  return parse

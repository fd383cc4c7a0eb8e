"""What `python -m hinqa_jax` and `python -m gen` share around absl's flag parsing: `COMMAND --help` per
command (its flags and the config keys it reads, with their values and the comments that declare them), and
every bad flag, config file or config key as one line on stderr, exit status 2, before any real work."""
from __future__ import annotations

import ast
import io
import os
import sys
import tokenize
from pathlib import Path
from typing import Callable

import ml_collections
from absl import flags


def _key_comments(path: str | Path) -> dict[str, str]:
  """dotted key -> its trailing comment, for every `c.a.b = ...  # comment` (or `data.a = ...`) in a config file."""
  text = Path(path).read_text(encoding="utf-8")
  comments = {tok.start[0]: tok.string.lstrip("# ").strip()
              for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.COMMENT}
  found: dict[str, str] = {}
  for node in ast.walk(ast.parse(text)):
    if not isinstance(node, ast.Assign) or not isinstance(node.targets[0], ast.Attribute):
      continue
    parts, target = [], node.targets[0]
    while isinstance(target, ast.Attribute):
      parts.insert(0, target.attr)
      target = target.value
    if isinstance(target, ast.Name) and target.id != "c":  # a helper's section argument (`data.root`)
      parts.insert(0, target.id)
    line = next((n for n in range(node.lineno, node.end_lineno + 1) if n in comments), None)
    if line is not None:
      found.setdefault(".".join(parts), comments[line])
  return found


def describe(config, sections: tuple[str, ...], comment_files: list[str]) -> str:
  """The keys of `sections` (all when empty) with their values in `config` and the comments that declare them,
  from the first of comment_files that has one (the schema first: its words win over an experiment's remark);
  a key set by a helper (`teacher(...)`'s `t.model`) matches by its last name. What `COMMAND --help` prints."""
  comments: dict[str, str] = {}
  for path in comment_files:
    for key, note in _key_comments(path).items():
      comments.setdefault(key, note)
  # `t.model = ...` in a helper whose section argument is `t`: not a key of the config itself
  by_leaf = {k.split(".", 1)[1]: v for k, v in comments.items() if k.count(".") == 1 and k.split(".")[0] not in config}
  flat = []

  def walk(node, prefix):
    for key in sorted(node.keys()):
      value = node[key]
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, f"{prefix}{key}.")
      else:
        flat.append((f"{prefix}{key}", value))
  walk(config, "")
  lines = []
  for key, value in flat:
    if sections and key.split(".")[0] not in sections:
      continue
    note = comments.get(key) or by_leaf.get(key.rsplit(".", 1)[-1], "")
    lines.append(f"  --config.{key}={value!r}" + (f"\n      {note}" if note else ""))
  return "\n".join(lines)


def fail(message: str) -> None:
  """One line on stderr and exit status 2 (absl's UsageError would print the whole flag list after it)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def config_file(argv: list[str]) -> str | None:
  return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)


def command_help(program: str, command: str, what: str, own_flags: tuple[str, ...], sections: tuple[str, ...],
                 config, config_path: str | None, comment_files: list[str]) -> str:
  """The text of `python -m PROGRAM COMMAND --help`: what it does, its flags, the config keys it reads."""
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

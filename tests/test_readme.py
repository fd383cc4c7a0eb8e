"""The README's layout names every module of hinqa_jax/, gen/ and bench/, and nothing that is gone."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIRS = ("hinqa_jax", "gen", "bench")


def layout_entries() -> dict[str, set[str]]:
  """{top-level dir: the *.py names its entry in README's ## Layout code block mentions}."""
  section = ROOT.joinpath("README.md").read_text(encoding="utf-8").split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
  block = section.split("```", 2)[1]
  entries: dict[str, set[str]] = {}
  current = None
  for line in block.splitlines():
    head = re.match(r"^(\S+)/\s", line)
    if head:
      current = head.group(1)
    if current is not None:
      entries.setdefault(current, set()).update(re.findall(r"(?<![\w/.])([\w]+\.py)\b", line))
  return entries


def test_layout_names_every_module_and_no_missing_one():
  entries = layout_entries()
  for d in DIRS:
    have = {f.name for f in (ROOT / d).glob("*.py") if f.name != "__init__.py"}
    named = entries.get(d, set())
    assert not have - named, f"README ## Layout does not name {sorted(have - named)} under {d}/"
    assert not named - have, f"README ## Layout names {sorted(named - have)} under {d}/, which do not exist"

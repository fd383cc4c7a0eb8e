"""The package's layers, read from the source with `ast`: imports run one way and form no circle.

Every module of hinqa_jax/ and gen/ has a layer; a module imports only modules of its own or a lower
layer (top-level imports and imports inside functions alike). gen/ sits beside train and reaches only
the lower layers of hinqa_jax; pipeline and bootstrap are the one place that calls both.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hinqa_jax", "gen")

LAYERS = {
    0: "files config cli tokenizer sharding distributed locks cpu_tuning tracking",
    1: "attention matmul quant model lora loss hf checkpoint",
    2: "records examples packing decode metrics significance",
    3: "train validation evaluate plan hlo targets experiments uncertainty report stages",
    4: "pipeline bootstrap __main__ __init__",
}
LAYER = {f"hinqa_jax.{name}": layer for layer, names in LAYERS.items() for name in names.split()}
GEN_LAYER = 3  # every gen module: beside train, above records/examples/decode
MAY_IMPORT_GEN = {"hinqa_jax.pipeline", "hinqa_jax.bootstrap", "hinqa_jax.__main__"}

# Imports inside functions that name a module of the two packages, each with the reason it stays there.
LAZY_OK = {
    **{("hinqa_jax.__main__", f"hinqa_jax.{m}"): "after flag parsing: `--help` and flag errors come before jax loads"
       for m in ("config", "cpu_tuning", "pipeline", "plan", "stages", "targets", "files", "distributed")},
    ("gen.__main__", "gen.__init__"): "after flag parsing, so `python -m gen --help` stays fast",
    ("gen.backends", "hinqa_jax.decode"): "the JAX teacher only: `import gen` works where JAX is not installed",
    ("gen.backends", "hinqa_jax.hf"): "the JAX teacher only: `import gen` works where JAX is not installed",
    ("gen.backends", "hinqa_jax.tokenizer"): "the JAX teacher only: `import gen` works where JAX is not installed",
}


def modules() -> dict[str, Path]:
  return {f"{pkg}.{f.stem}": f for pkg in PACKAGES for f in sorted((ROOT / pkg).glob("*.py"))}


def imports(path: Path) -> list[tuple[str, bool, int]]:
  """(imported module of the two packages, inside a function?, line) for every import in the file."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  top = {id(node) for node in tree.body}
  known = set(modules())
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):  # `import gen` runs gen/__init__.py
      names = [f"{a.name}.__init__" if a.name in PACKAGES else a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, f"{path}:{node.lineno}: a relative import (the layer check reads absolute ones)"
      if not node.module:
        continue
      # `from hinqa_jax import data` names a module; `from hinqa_jax.data import x` names its module.
      names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
    else:
      continue
    for name in names:
      if name.split(".")[0] in PACKAGES and name in known:
        out.append((name, id(node) not in top, node.lineno))
  return out


def layer_of(module: str) -> int:
  if module.startswith("gen."):
    return GEN_LAYER
  assert module in LAYER, f"{module}: give it a layer in tests/test_layers.py LAYERS"
  return LAYER[module]


def graph() -> dict[str, set[str]]:
  return {m: {t for t, _, _ in imports(p) if t != m} for m, p in modules().items()}


def test_every_module_has_a_layer():
  missing = [m for m in modules() if m.startswith("hinqa_jax.") and m not in LAYER]
  assert not missing, f"modules without a layer: {missing}"
  stale = [m for m in LAYER if m not in modules()]
  assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_imports_run_down_the_layers():
  wrong = []
  for mod, path in modules().items():
    for target, _, line in imports(path):
      if target == mod:
        continue
      if target.startswith("gen.") and mod.startswith("hinqa_jax.") and mod not in MAY_IMPORT_GEN:
        wrong.append(f"{path.relative_to(ROOT)}:{line}: {mod} imports {target} (only pipeline/bootstrap may)")
      elif mod.startswith("gen.") and target.startswith("hinqa_jax.") and layer_of(target) >= GEN_LAYER:
        wrong.append(f"{path.relative_to(ROOT)}:{line}: {mod} imports {target} (gen uses only the layers below train)")
      elif layer_of(target) > layer_of(mod):
        wrong.append(f"{path.relative_to(ROOT)}:{line}: {mod} (layer {layer_of(mod)}) imports {target} "
                     f"(layer {layer_of(target)})")
  assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
  """A list of modules forming a circle, or None (depth-first search, three colours)."""
  state: dict[str, int] = {}  # 1 = on the stack, 2 = done
  stack: list[str] = []

  def visit(node: str) -> list[str] | None:
    state[node] = 1
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(edges):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_find_cycle_finds_a_circle_and_passes_a_tree():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circles():
  edges = {m: {t for t in targets if not t.endswith(".__init__")} for m, targets in graph().items()}
  assert find_cycle(edges) is None, f"import circle: {' -> '.join(find_cycle(edges))}"


def test_no_module_getattr_shims():
  shims = [m for m, p in modules().items()
           if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in ast.parse(p.read_text()).body)]
  assert not shims, f"module-level __getattr__ (a lazy import hiding a circle) in {shims}"


def test_package_imports_at_module_top():
  lazy = []
  for mod, path in modules().items():
    for target, inside, line in imports(path):
      if inside and target != mod and (mod, target) not in LAZY_OK:
        lazy.append(f"{path.relative_to(ROOT)}:{line}: {mod} imports {target} inside a function")
  assert not lazy, "package imports inside functions (move them to the top, or say why in LAZY_OK):\n" + "\n".join(lazy)


def test_import_gen_loads_no_jax():
  """LAZY_OK's reason holds: gen (synthesis on a vLLM node, curation) imports without JAX or transformers."""
  code = "import sys, gen; print(sorted({'jax', 'flax', 'transformers', 'torch'} & set(sys.modules)))"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "[]"

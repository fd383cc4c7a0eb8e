"""Reading a compiled (optimized) HLO module's text: matmul FLOPs with loop trip counts, and the kernels
(custom calls) it runs, by name. `plan` reports both for the target it compiled for."""
from __future__ import annotations

import math
import re

_CALL_RE = re.compile(r"\b(calls|body|to_apply|branch_computations|true_computation|false_computation)="
                      r"(\{[^}]*\}|%?[\w.\-]+)")
_TRIP_RE = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_DEF_RE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = [a-z0-9]+\[([0-9,]*)\]")
_HEAD_RE = re.compile(r"^(ENTRY )?%?([\w.\-]+) \(.*\{\s*$")


def _product_flops(line: str, shapes: dict[str, list[int]], out_shape: list[int]) -> float:
  """2 * multiply-adds of one dot, or of a convolution (how the TPU compiler writes a dot).

  A convolution's contracted size is the lhs's `f` (over feature_group_count) times, per spatial
  dimension, the window taps that land inside the input: the TPU compiler writes some batched dots as a
  window of 2 over a padded spatial dimension of which one tap per output position reads padding."""
  lhs = re.search(r" (?:dot|convolution)\([^%]*%([\w.\-]+)", line).group(1)
  lhs_shape = shapes[lhs]
  out_size = math.prod(out_shape)
  m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", line)
  if m:
    return 2.0 * out_size * math.prod(lhs_shape[int(i)] for i in m.group(1).split(",") if i)
  lhs_labels, out_labels = re.search(r"dim_labels=(\w+)_\w+->(\w+)", line).groups()
  groups = re.search(r"feature_group_count=(\d+)", line)
  macs = out_size * lhs_shape[lhs_labels.index("f")] // (int(groups.group(1)) if groups else 1)
  window = re.search(r"window=\{([^}]*)\}", line)
  if window:
    fields = dict(re.findall(r"(\w+)=([\w\-]+)", window.group(1)))
    sizes = [int(x) for x in fields["size"].split("x")]
    pads = [tuple(int(v) for v in p.split("_")) for p in fields.get("pad", "").split("x")] if "pad" in fields else None
    strides = [int(x) for x in fields["stride"].split("x")] if "stride" in fields else [1] * len(sizes)
    for d, w in enumerate(sizes):
      n, out_n = lhs_shape[lhs_labels.index(str(d))], out_shape[out_labels.index(str(d))]
      lo = pads[d][0] if pads else 0
      inside = sum(1 for o in range(out_n) for k in range(w) if 0 <= o * strides[d] + k - lo < n)
      macs = macs * inside // out_n  # taps per output position that read the input, on average
  return 2.0 * macs


def hlo_matmul_flops(hlo_text: str) -> float:
  """Matmul FLOPs of an optimized HLO module (dots, and the convolutions TPU writes them as), with each
  while loop's body counted its trip count times: XLA:GPU/CPU annotate it (known_trip_count); the TPU
  compiler does not, and there it is read off the loop condition `counter < constant(N)` (a scan's).

  XLA's cost_analysis counts a loop body once, so a model whose layers run in a scan would show one
  layer's FLOPs; this walks the call graph instead (2 * output size * contracted size per product).
  """
  comps: dict[str, dict] = {}
  entry, cur = None, None
  for line in hlo_text.splitlines():
    head = _HEAD_RE.match(line)
    if head:
      cur = comps.setdefault(head.group(2), {"flops": 0.0, "calls": [], "shapes": {}, "consts": {}, "bound": None})
      entry = head.group(2) if head.group(1) else entry
      continue
    if cur is None or line.startswith("}"):
      continue
    d = _DEF_RE.match(line)
    if d:
      cur["shapes"][d.group(1)] = [int(x) for x in d.group(2).split(",") if x]
    const = re.match(r"^\s*%?([\w.\-]+) = s32\[\]\S* constant\((\d+)\)", line)
    if const:
      cur["consts"][const.group(1)] = int(const.group(2))
    lt = re.match(r"^\s*ROOT %?[\w.\-]+ = pred\[\]\S* compare\(%?[\w.\-]+, %?([\w.\-]+)\), direction=LT", line)
    if lt and lt.group(1) in cur["consts"]:
      cur["bound"] = cur["consts"][lt.group(1)]
    if d and (" dot(" in line or " convolution(" in line):
      cur["flops"] += _product_flops(line, cur["shapes"], cur["shapes"][d.group(1)])
    trip = _TRIP_RE.search(line)
    cond = re.search(r"\bcondition=%?([\w.\-]+)", line)
    for kind, target in _CALL_RE.findall(line):
      mult: int | str = 1
      if kind == "body":
        mult = int(trip.group(1)) if trip else (cond.group(1) if cond else 1)  # a name: that condition's bound
      for name in re.findall(r"%?([\w.\-]+)", target.strip("{}")):
        cur["calls"].append((name, mult))

  memo: dict[str, float] = {}

  def times(mult: int | str) -> int:
    return mult if isinstance(mult, int) else (comps.get(mult, {}).get("bound") or 1)

  def total(name: str) -> float:
    if name not in memo:
      c = comps.get(name, {"flops": 0.0, "calls": []})
      memo[name] = c["flops"] + sum(times(m) * total(callee) for callee, m in c["calls"])
    return memo[name]

  return total(entry) if entry else 0.0


_CUSTOM_RE = re.compile(r'custom_call_target="([^"]+)"')


def kernels(hlo_text: str) -> dict[str, list[str]]:
  """Custom-call targets of a compiled module and, for Pallas kernels (Mosaic on TPU, Triton on GPU),
  the kernels' names (their instructions', which carry the pallas_call's name):
  {"tpu_custom_call": ["splash_mha_dkv_segmented_no_residuals", ...], "__gpu$xla.gpu.triton": ["mha_forward", ...]}."""
  out: dict[str, set[str]] = {}
  for line in hlo_text.splitlines():
    m = _CUSTOM_RE.search(line)
    if not m:
      continue
    names = out.setdefault(m.group(1), set())
    if m.group(1) == "__gpu$xla.gpu.triton":  # the kernel's name is in its backend config
      names.update(re.findall(r'\bname = "([\w\-]+)"', line))
    elif m.group(1) == "tpu_custom_call":  # the instruction is named after the kernel
      d = re.match(r"^\s*(?:ROOT )?%?([\w\-]+?)(?:\.\d+)*(?:\.clone(?:\.\d+)*)? = ", line)
      names.update([d.group(1)] if d else [])
  return {k: sorted(v) for k, v in sorted(out.items())}

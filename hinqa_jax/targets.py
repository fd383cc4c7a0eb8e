"""Accelerators to compile for without owning them: TPU slices by libtpu topology, GPU nodes by an XLA
GpuTargetConfigProto (gpu_targets/*.txtpb), and fake CPU devices (`cpu-N`).

    devices = targets.devices("v5e-8")     # 8 "TPU v5 lite" devices of a topology: jit(...).lower(...).compile()
                                           # then runs libtpu's compiler on this CPU machine

Peak FLOP/s (dense bf16) and memory bandwidth are the vendors' public figures per chip; they feed
`plan`'s roofline estimate only. Memory is what the compiled program is checked against.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from pathlib import Path

# Before JAX starts its backends: the CUDA plugin (the GPU compiler) loads without a driver, and
# libtpu's lock file does not stop parallel compiling processes.
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
from jax.experimental import topologies  # noqa: E402

GPU_TARGET_DIR = Path(__file__).resolve().parent / "gpu_targets"
GiB = 2**30
AOT_INSTALL = "make aot (its own venv, .venv-aot, from requirements-aot.txt)"


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  platform: str  # tpu | gpu | cpu
  devices: int
  memory: int  # bytes of one device
  peak_flops: float  # dense bf16 FLOP/s of one device
  hbm_bandwidth: float  # bytes/s of one device
  topology: str = ""  # TPU: libtpu topology name; GPU: "1x1xN"
  chips_per_host: tuple[int, int, int] | None = None  # TPU hosts (a multi-host slice compiles from one process)
  megacore: bool = False  # TPU v4: one device per chip (its two cores as one)
  gpu_config: str = ""  # GPU: file in gpu_targets/

  @property
  def hosts(self) -> int:
    if self.chips_per_host is None:
      return 1
    return max(1, self.devices // (self.chips_per_host[0] * self.chips_per_host[1] * self.chips_per_host[2]))


def _tpu(name, topology, n, memory_gib, tflops, gbps, per_host=None, megacore=False):
  return Target(name, "tpu", n, int(memory_gib * GiB), tflops * 1e12, gbps * 1e9, topology, per_host, megacore)


def _gpu(name, n, config, memory, tflops, gbps):
  return Target(name, "gpu", n, memory, tflops * 1e12, gbps * 1e9, f"1x1x{n}", None, False, config)


_H100, _A100_80, _A100_40, _L4 = 84929347584, 85899345920, 42949672960, 24152899584  # as the device reports
TARGETS: dict[str, Target] = {t.name: t for t in [
    # TPU v5e: 16 GiB HBM, 197 TFLOP/s bf16, 819 GB/s per chip; 4 or 8 chips a host.
    _tpu("v5e-1", "v5e:1x1", 1, 16, 197, 819, (1, 1, 1)),
    _tpu("v5e-4", "v5e:2x2", 4, 16, 197, 819, (2, 2, 1)),
    _tpu("v5e-8", "v5e:2x4", 8, 16, 197, 819, (2, 4, 1)),
    _tpu("v5e-256", "v5e:16x16", 256, 16, 197, 819, (2, 2, 1)),  # 64 hosts
    # TPU v5p: 95 GiB HBM, 459 TFLOP/s, 2765 GB/s per chip; v5p-8 is 4 chips (the name counts cores).
    _tpu("v5p-8", "v5p:2x2x1", 4, 95, 459, 2765, (2, 2, 1)),
    # TPU v6e (Trillium): 32 GiB HBM, 918 TFLOP/s, 1640 GB/s per chip.
    _tpu("v6e-8", "v6e:2x4", 8, 32, 918, 1640, (2, 4, 1)),
    # TPU v4: 32 GiB HBM, 275 TFLOP/s, 1200 GB/s per chip; v4-8 is 4 chips in megacore mode.
    _tpu("v4-8", "v4:2x2x1", 4, 32, 275, 1200, (2, 2, 1), megacore=True),
    # NVIDIA, dense bf16 tensor-core peaks (no sparsity).
    _gpu("h100x1", 1, "h100_sxm_80gb.txtpb", _H100, 989, 3352),
    _gpu("h100x4", 4, "h100_sxm_80gb.txtpb", _H100, 989, 3352),
    _gpu("h100x8", 8, "h100_sxm_80gb.txtpb", _H100, 989, 3352),
    _gpu("a100-80x8", 8, "a100_sxm_80gb.txtpb", _A100_80, 312, 2039),
    _gpu("a100-40x1", 1, "a100_sxm_40gb.txtpb", _A100_40, 312, 1555),
    _gpu("l4x1", 1, "l4_24gb.txtpb", _L4, 121, 300),
]}


def get(name: str) -> Target:
  """A named target, or `cpu-N` (N fake CPU devices; the XLA:CPU compiler, no accelerator figures)."""
  m = re.fullmatch(r"cpu-(\d+)", name)
  if m:
    return Target(name, "cpu", int(m.group(1)), 0, 0.0, 0.0)
  if name not in TARGETS:
    raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)} or cpu-N")
  return TARGETS[name]


def compiler_installed(platform: str) -> bool:
  """Whether this Python has the compiler of a platform: libtpu for TPU, the CUDA PJRT plugin for GPU."""
  module = {"tpu": "libtpu", "gpu": "jax_plugins.xla_cuda12", "cpu": "jax"}[platform]
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # jax_plugins absent
    return False


def devices(target: Target | str) -> list:
  """The target's devices, for `jax.jit(...).lower(...).compile()` with its real compiler. TPU: a libtpu
  topology (every host's devices, from this one process); GPU: deviceless XLA:GPU for the target text;
  cpu-N: N fake CPU devices."""
  target = get(target) if isinstance(target, str) else target
  if not compiler_installed(target.platform):
    what = "libtpu (jax[tpu])" if target.platform == "tpu" else "the jax-cuda12-plugin and jax-cuda12-pjrt wheels"
    raise RuntimeError(f"target {target.name}: its compiler is not installed in this Python; {what} brings it: "
                       f"run {AOT_INSTALL}, then .venv-aot/bin/python -m hinqa_jax plan ...")
  if target.platform == "tpu":
    kw = {"chip_config_name": "megacore"} if target.megacore else {}
    if target.chips_per_host:
      kw["chips_per_host_bounds"] = target.chips_per_host
    return list(topologies.get_topology_desc(platform="tpu", topology_name=target.topology, **kw).devices)
  if target.platform == "gpu":
    text = (GPU_TARGET_DIR / target.gpu_config).read_text()
    return list(topologies.get_topology_desc(platform="cuda", target_config=text, topology=target.topology).devices)
  return cpu_devices(target.devices)


def _forced_cpu_devices() -> int:
  m = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
  return max(int(m.group(1)) if m else 1, jax.config.jax_num_cpu_devices)


def cpu_devices(n: int) -> list:
  """n CPU devices to compile for (the `cpu-N` target).

  Fake CPU devices can only be made before JAX starts its backends; this asks for them then (so
  `python -m hinqa_jax plan --target=cpu-64` needs nothing else). In a process whose JAX already runs
  with fewer, it raises and says how to get them.
  """
  if n > _forced_cpu_devices():
    try:
      jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
      pass  # JAX already started: only what it has
  devices = jax.devices("cpu")
  if len(devices) < n:
    raise ValueError(f"plan for {n} devices, but this process's JAX already started with {len(devices)}; "
                     f"run the plan in a fresh process (python -m hinqa_jax plan --target=cpu-{n} ...) or set "
                     f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX is imported")
  return devices[:n]

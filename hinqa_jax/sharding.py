"""Meshes and sharding rules, as data: one pure function from a parameter's path and shape to a PartitionSpec.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel that also shards weights and adapters),
`tensor` (Megatron-style: column-parallel q/k/v/gate/up, row-parallel o/down). The batch is split
over (data, fsdp). An axis that does not divide a dimension is dropped from that dimension's spec
(replicated there) rather than failing, so tiny test models run on any mesh.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (in_axis, out_axis) of each projection's [D_in, D_out] kernel.
_PROJ_AXES = {"q_proj": ("fsdp", "tensor"), "k_proj": ("fsdp", "tensor"), "v_proj": ("fsdp", "tensor"),
              "gate_proj": ("fsdp", "tensor"), "up_proj": ("fsdp", "tensor"),
              "o_proj": ("tensor", "fsdp"), "down_proj": ("tensor", "fsdp")}


def mesh_shape(sizes: dict[str, int], n_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) with at most one -1 filled by the devices left over; must multiply to n_devices."""
  shape = [int(sizes[a]) for a in AXES]
  if shape.count(-1) > 1:
    raise ValueError(f"mesh {dict(zip(AXES, shape))}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh {dict(zip(AXES, shape))}: sizes must be positive (or -1 for the rest)")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if n_devices % known:
      raise ValueError(f"mesh {dict(zip(AXES, shape))}: {known} does not divide the {n_devices} devices")
    shape[shape.index(-1)] = n_devices // known
  if math.prod(shape) != n_devices:
    raise ValueError(f"mesh {dict(zip(AXES, shape))} needs {math.prod(shape)} devices, but there are {n_devices}")
  return tuple(shape)


def make_mesh(sizes: dict[str, int], devices=None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all), with Auto axes so GSPMD propagates."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(sizes, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def _fit(axes: tuple, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drop mesh axes that are absent, of size 1 or that do not divide their dimension."""
  out = []
  for dim, ax in zip(shape, axes):
    if ax is None:
      out.append(None)
      continue
    size = math.prod(mesh.shape[a] for a in (ax if isinstance(ax, tuple) else (ax,)))
    out.append(ax if size > 1 and dim % size == 0 else None)
  return P(*out)


_ROOTS = ("layers", "embed_tokens", "lm_head", "norm")


def param_axes(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple:
  """Logical mesh axes of one leaf of the base tree, the adapter tree or an optimizer state mirroring them.

  Optimizer states hold copies of the trainable tree under prefixes such as (0, "mu"); the rule reads
  the path from its model root, so moments are sharded exactly like the parameters they belong to.
  """
  roots = [i for i, k in enumerate(path) if k in _ROOTS]
  if not roots or not shape:
    return (None,) * len(shape)
  path = path[roots[0]:]
  name = path[-2] if len(path) >= 2 else path[-1]
  leaf = path[-1]
  stacked = path[0] == "layers"
  lead = (None,) if stacked else ()
  if name in _PROJ_AXES:
    in_ax, out_ax = _PROJ_AXES[name]
    if leaf in ("kernel", "kernel_nf4", "kernel_int8", "kernel_absmax"):  # quantized leaves lie along the kernel
      return lead + (in_ax, out_ax)
    if leaf == "a":  # [L, D_in, R]: follows the kernel's input dimension
      return lead + (in_ax, None)
    if leaf == "b":  # [L, R, D_out]: follows the kernel's output dimension
      return lead + (None, out_ax)
  if path[:2] == ("embed_tokens", "embedding"):
    return ("tensor", "fsdp")
  if path[:2] == ("lm_head", "kernel"):
    return ("fsdp", "tensor")
  return (None,) * len(shape)  # norms and anything small: replicated


def param_spec(path: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
  return _fit(param_axes(path, shape), shape, mesh)


def _key_name(k) -> str:
  return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
  """NamedSharding for every leaf of a base-parameter or adapter tree (arrays or ShapeDtypeStructs)."""
  def one(path, leaf):
    names = tuple(_key_name(k) for k in path)
    return NamedSharding(mesh, param_spec(names, tuple(leaf.shape), mesh))
  return jax.tree_util.tree_map_with_path(one, tree)


def platform(mesh: Mesh | None = None, default: str | None = None) -> str:
  """The platform a program is compiled for: the mesh's devices' ("tpu" for a TPU topology even in a CPU
  process), else `default`, else JAX's default backend."""
  if mesh is not None:
    return mesh.devices.flat[0].platform
  return default or jax.default_backend()


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a [B, T] batch split over (data, fsdp)."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def activation_sharding(mesh: Mesh) -> NamedSharding:
  """[B, T, D] activations between layers: batch over (data, fsdp), features replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, None, None))


def batch_divisor(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def like_tree(tree: Any, sharding_tree: Any) -> Any:
  """ShapeDtypeStructs carrying shardings: the abstract target to create or restore a tree already sharded."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sharding_tree)

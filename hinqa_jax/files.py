"""Files, the lowest layer: repository paths, atomic writes of a file or a whole directory, file digests.

No JAX here, so gen/ (which may run where JAX is not installed) writes and hashes files the same way.
A temporary name carries the host and process id: processes sharing a filesystem never write the
same temporary file, and a reader sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(path: str | os.PathLike) -> Path:
  """A config's path: as given when it exists (or is absolute), else relative to the repository root
  when it exists there (configs name data/... and work from any directory), else as given."""
  path = Path(path)
  if path.exists() or path.is_absolute() or not (REPO_ROOT / path).exists():
    return path
  return REPO_ROOT / path


def _tmp_name(path: Path, suffix: str) -> Path:
  return path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.{suffix}")


def write_atomic(path: str | os.PathLike, text: str) -> Path:
  """Write text (UTF-8) beside `path` under a name unique to this process, fsync, rename it into place."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = _tmp_name(path, "tmp")
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
  """Yield an empty temporary directory beside out_dir; when the block ends without an error, it
  replaces out_dir (an old out_dir is moved aside first, then deleted); on an error it is removed.
  out_dir therefore appears whole or not at all."""
  out_dir = Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp, old = _tmp_name(out_dir, "tmp"), _tmp_name(out_dir, "old")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    yield tmp
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if out_dir.exists():
    shutil.rmtree(old, ignore_errors=True)
    out_dir.rename(old)
  tmp.rename(out_dir)
  shutil.rmtree(old, ignore_errors=True)


_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> digest, per process


def file_digest(path: str | os.PathLike) -> str:
  """16 hex digits of the sha256 of a file's bytes, or "missing". Streamed (a 5 GB weight shard is never
  in memory) and remembered by (path, inode, size, mtime, ctime), so a file is read once per process and a
  rewrite is read again even within one tick of a coarse filesystem clock (a rename gives a new inode)."""
  p = Path(path)
  if not p.is_file():
    return "missing"
  st = p.stat()
  memo = (str(p.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
  if memo not in _digests:
    with open(p, "rb") as f:
      _digests[memo] = hashlib.file_digest(f, "sha256").hexdigest()[:16]
  return _digests[memo]

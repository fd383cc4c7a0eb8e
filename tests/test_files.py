"""files.py: config paths, atomic writes of a file and of a directory, file digests."""
import hashlib
import os
import shutil
import subprocess

import pytest

from hinqa_jax import files


def test_repo_path_prefers_the_working_directory_then_the_repo_root(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert files.repo_path("data/vatika_mini/train.json") == files.REPO_ROOT / "data/vatika_mini/train.json"
  (tmp_path / "data" / "vatika_mini").mkdir(parents=True)
  (tmp_path / "data" / "vatika_mini" / "train.json").write_text("{}")
  assert str(files.repo_path("data/vatika_mini/train.json")) == "data/vatika_mini/train.json"
  assert str(files.repo_path("nowhere.json")) == "nowhere.json"  # the caller's error names it as given


def test_write_atomic_replaces_and_leaves_no_temporary_file(tmp_path):
  path = tmp_path / "sub" / "out.json"
  files.write_atomic(path, "पहला")
  files.write_atomic(path, "दूसरा")
  assert path.read_text(encoding="utf-8") == "दूसरा"
  assert os.listdir(path.parent) == ["out.json"]


def test_atomic_dir_keeps_the_old_dir_when_the_block_fails(tmp_path):
  out = tmp_path / "packed"
  with files.atomic_dir(out) as tmp:
    (tmp / "a.txt").write_text("1")
  assert sorted(os.listdir(out)) == ["a.txt"]
  with pytest.raises(RuntimeError):
    with files.atomic_dir(out) as tmp:
      (tmp / "b.txt").write_text("2")
      raise RuntimeError("disk full")
  assert sorted(os.listdir(out)) == ["a.txt"] and sorted(os.listdir(tmp_path)) == ["packed"]
  with files.atomic_dir(out) as tmp:
    (tmp / "c.txt").write_text("3")
  assert sorted(os.listdir(out)) == ["c.txt"] and sorted(os.listdir(tmp_path)) == ["packed"]


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not installed")
def test_file_digest_is_sha256sum_and_follows_a_changed_file(tmp_path):
  path = tmp_path / "shard.bin"
  path.write_bytes(os.urandom(3 << 20))  # several of hashlib.file_digest's read chunks
  want = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True).stdout.split()[0]
  assert files.file_digest(path) == want[:16]
  path.write_bytes(b"changed")
  assert files.file_digest(path) == hashlib.sha256(b"changed").hexdigest()[:16]
  assert files.file_digest(tmp_path / "none") == "missing"

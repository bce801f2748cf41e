"""A full disk: `mmjax convert` and `mmjax train` stop with one line (not Orbax's hundreds of
lines of background-thread tracebacks), exit 1, and leave nothing half-written."""

import pytest

from fault_helpers import TINY, mmjax, small_disk
from hf_files import tiny_llava


def _one_error_line(proc, command: str) -> str:
  errors = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert len(errors) <= 3 and errors[-1].startswith(f"mmjax {command}: error: "), proc.stderr
  message = errors[-1].lower()
  assert "no space left on device" in message or "file too large" in message, proc.stderr
  return message


@pytest.mark.parametrize("file_size_limit", [False, True], ids=["small_disk", "file_size_limit"])
def test_convert_on_a_full_disk(tmp_path, env, file_size_limit):
  hf = tiny_llava(str(tmp_path / "hf"))  # its checkpoint takes ~1.3 MB
  disk = str(tmp_path / "disk")
  with small_disk(disk, 256 * 1024 if not file_size_limit else 8192, file_size_limit) as run:
    proc, left = run(mmjax("convert", "--hf", hf, "--out", f"{disk}/ck", "--quiet"), env)
  _one_error_line(proc, "convert")
  assert left == [], left  # neither the checkpoint nor its staging directory


def test_train_on_a_full_disk(tmp_path, env):
  disk = str(tmp_path / "disk")
  with small_disk(disk, 96 * 1024) as run:  # the config and metrics fit, a checkpoint does not
    proc, left = run(mmjax("train", "--workdir", f"{disk}/run", *TINY, "--config.train.steps=4",
                           "--config.checkpoint.every_steps=2", "--config.eval.kind="), env)
  _one_error_line(proc, "train")
  saved = [p for p in left if p.startswith("run/checkpoints/") and p.count("/") == 2]
  assert not saved, left  # no step directory, complete or half-written
  assert "run/model" not in left, left

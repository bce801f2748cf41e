"""Test setup: CPU JAX with 8 fake devices (set before JAX starts), helpers importable."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(__file__))

# One XLA compilation cache per test session, shared by the xdist workers and every `mmjax`
# subprocess they start: many tests build the same tiny models (each Trainer traces its step
# anew, each resumed run is a new process), and XLA's compilation is most of their time on 2
# cores. The controller makes the directory before the workers start (they inherit the
# environment) and removes it at the end; a cache the caller set is left alone.
_SESSION_CACHE = "PYTEST_SESSION_JAX_CACHE"


def pytest_configure(config):
  if hasattr(config, "workerinput") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  import tempfile  # pylint: disable=g-import-not-at-top

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmjax-test-jax-cache-")
  os.environ[_SESSION_CACHE] = os.environ["JAX_COMPILATION_CACHE_DIR"]


def pytest_unconfigure(config):
  cache = os.environ.get(_SESSION_CACHE)
  if cache and not hasattr(config, "workerinput"):
    import shutil  # pylint: disable=g-import-not-at-top

    shutil.rmtree(cache, ignore_errors=True)


# The files that take longest (worker seconds on 2 cores, measured), longest first: xdist hands
# whole files to the two workers in collection order (`--dist loadfile --no-loadscope-reorder`),
# so long files start early and the many short ones at the end even out the workers' finish
# (longest-processing-time-first). tests/aot goes first: its preset compiles run in a process
# pool beside both workers for most of the suite. Files not listed follow in path order.
LONGEST_FIRST = (
    "tests/aot/test_aot.py",  # ~2400 (mostly the preset pool)
    "tests/train/test_train.py",  # ~830
    "tests/train/test_qwen_vl_train.py",  # ~820
    "tests/train/test_multihost.py",  # ~350
    "tests/train/test_contrastive_train.py",  # ~330
    "tests/train/test_head_loss_layouts.py",  # ~250
    "tests/train/test_preference_train.py",  # ~240
    "tests/train/test_lora.py",  # ~230
    "tests/train/test_mllama_train.py",  # ~210
    "tests/train/test_internvl_train.py",  # ~200
    "tests/train/test_host_image_train.py",  # ~250
    "tests/train/test_blip2_train.py",  # ~200
    "tests/train/test_blip2_stage2.py",  # ~150 (stage 1, then stage 2 twice for the resume)
    "tests/train/test_minigpt4.py",  # ~100
    "tests/faults/test_kills.py",  # ~190
    "tests/parity/test_blip2.py",  # ~165
    "tests/parity/test_instructblip.py",  # ~155
    "tests/train/test_train_pipeline.py",  # ~140
    "tests/train/test_head_loss.py",  # ~170
    "tests/train/test_qwen_vl_video_train.py",  # ~160
    "tests/parity/test_idefics2.py",  # ~155
    "tests/parity/test_qwen_vl.py",  # ~150
    "tests/parity/test_internvl.py",  # ~145
)


def pytest_collection_modifyitems(config, items):
  rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
  root = str(config.rootpath)
  missing = [p for p in LONGEST_FIRST if not os.path.exists(os.path.join(root, p))]
  if missing:  # a renamed file would silently lose its place
    raise ValueError(f"tests/conftest.py LONGEST_FIRST names files that do not exist: {missing}")

  def file_rank(item):
    path = os.path.relpath(str(item.path), root).replace(os.sep, "/")
    return rank.get(path, len(rank))

  items.sort(key=file_rank)  # stable: each file's tests, and the other files, keep their order

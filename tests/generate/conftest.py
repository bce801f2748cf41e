"""Makes `gen_helpers` importable for the generation tests."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
  """One converted CLIP + Llama (GQA) LLaVA shared by the CLI, sampling and sharding tests:
  (hf model, hf config, family, config, params, checkpoint dir)."""
  from gen_helpers import build_llava

  tmp = tmp_path_factory.mktemp("tiny_llava")
  return (*build_llava(tmp, seed=7), str(tmp / "mm"))

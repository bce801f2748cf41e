"""BLIP-2 with Flan-T5 chat mode: the builder's arrays equal Blip2Processor's (the image tokens,
the prompt, `</s>`) and `mmjax generate --image --prompt` answers as transformers' greedy
`generate` (the checks: `blip2_chat.py`)."""

import pytest

import blip2_chat


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return blip2_chat.chat_model(tmp_path_factory.mktemp("blip2_t5_chat"), "blip-2-t5")


def test_builder_arrays_equal_the_processor(model):
  blip2_chat.check_builder_arrays(model, "blip-2-t5")


def test_chat_mode_answers_like_transformers(model, capsys):
  blip2_chat.check_chat_answer(model, "blip-2-t5", capsys)

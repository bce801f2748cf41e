"""InstructBLIP chat mode: the builder's arrays equal InstructBlipProcessor's, `mmjax generate
--image --prompt` answers as transformers' greedy `generate`, and export writes the Q-Former
tokenizer back (the checks: `blip2_chat.py`)."""

import pytest

import blip2_chat


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return blip2_chat.chat_model(tmp_path_factory.mktemp("instructblip_chat"), "instructblip")


def test_builder_arrays_equal_the_processor(model):
  blip2_chat.check_builder_arrays(model, "instructblip")


def test_export_keeps_the_qformer_tokenizer(model, tmp_path):
  blip2_chat.check_export_keeps_the_qformer_tokenizer(model, tmp_path)


def test_chat_mode_answers_like_transformers(model, capsys):
  blip2_chat.check_chat_answer(model, "instructblip", capsys)

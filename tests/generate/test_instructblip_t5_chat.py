"""InstructBLIP with Flan-T5 chat mode: the builder's arrays equal InstructBlipProcessor's (the
image tokens, the prompt, `</s>`; the Q-Former's BERT instruction) and `mmjax generate --image
--prompt` answers as transformers' greedy `generate` (the checks: `blip2_chat.py`)."""

import pytest

import blip2_chat


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return blip2_chat.chat_model(tmp_path_factory.mktemp("instructblip_t5_chat"),
                               "instructblip-t5")


def test_builder_arrays_equal_the_processor(model):
  blip2_chat.check_builder_arrays(model, "instructblip-t5")


def test_chat_mode_answers_like_transformers(model, capsys):
  blip2_chat.check_chat_answer(model, "instructblip-t5", capsys)

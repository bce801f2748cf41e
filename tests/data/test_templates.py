"""Chat templates: exact renderings and assistant spans (end-of-turn included)."""

import json

import pytest

from mmjax.data.templates import INTERNVL_SYSTEM, VICUNA_SYSTEM, ChatTemplate
from mmjax.data.tokenizer import Tokenizer

CONV = [{'role': 'user', 'content': '<image>\nWhat is it?'}, {'role': 'assistant', 'content': 'A cat.'},
        {'role': 'user', 'content': 'Color?'}, {'role': 'assistant', 'content': 'Black.'}]


def _assistant_text(template, messages):
  text, spans = template.render_with_spans(messages)
  return text, [text[s:e] for s, e in spans]


def test_vicuna_v1():
  text, answers = _assistant_text(ChatTemplate.from_name('vicuna_v1'), CONV)
  assert text == (f'{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>'
                  'USER: Color? ASSISTANT: Black.</s>')
  assert answers == [' A cat.</s>', ' Black.</s>']


def test_plain_drops_user_text():
  text, answers = _assistant_text(ChatTemplate.from_name('plain'), CONV[:2])
  assert text == '<image>A cat.\n'
  assert answers == ['A cat.\n']


def test_llama3():
  text, answers = _assistant_text(ChatTemplate.from_name('llama3'), CONV[:2])
  assert text == ('<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>'
                  '<|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>')
  assert answers == ['A cat.<|eot_id|>']


def test_chatml_and_internvl_system_prompts():
  text, answers = _assistant_text(ChatTemplate.from_name('chatml'), CONV[:2])
  assert text == ('<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n'
                  '<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n')
  assert answers == ['A cat.<|im_end|>\n']
  text, _ = _assistant_text(ChatTemplate.from_name('internvl'), CONV[:2])
  assert text.startswith(f'<|im_start|>system\n{INTERNVL_SYSTEM}<|im_end|>\n')
  own_system = [{'role': 'system', 'content': 'Be brief.'}] + CONV[:2]
  text, answers = _assistant_text(ChatTemplate.from_name('chatml'), own_system)
  assert text.startswith('<|im_start|>system\nBe brief.<|im_end|>\n') and text.count('system') == 1
  assert answers == ['A cat.<|im_end|>\n']


def test_tokenizer_config_jinja_template(tmp_path, tokenizer_dir):
  # A Qwen-style template as it appears in tokenizer_config.json (with HF's generation markers).
  source = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
            "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
            "{% endgeneration %}{{ '\n' }}{% else %}{{ message['content'] + '<|im_end|>\n' }}{% endif %}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
  (tmp_path / 'tokenizer.json').write_text(open(f'{tokenizer_dir}/tokenizer.json').read())
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'chat_template': source, 'eos_token': '</s>'}))
  tok = Tokenizer.load(str(tmp_path))
  text, answers = _assistant_text(ChatTemplate.from_name('tokenizer', tok), CONV)
  assert text.endswith('<|im_start|>assistant\nBlack.<|im_end|>\n')
  assert answers == ['A cat.<|im_end|>\n', 'Black.<|im_end|>\n']


def test_inconsistent_template_is_a_clear_error():
  bad = ChatTemplate("{% for m in messages | reverse %}{{ m['content'] }}{% endfor %}", name='bad')
  with pytest.raises(ValueError, match="'bad' is not prefix-consistent"):
    bad.render_with_spans(CONV[:2])


def test_unknown_template():
  with pytest.raises(ValueError, match='unknown chat template'):
    ChatTemplate.from_name('nope')

"""Chat templates (jinja2) and the character spans of assistant turns.

Every template, built-in or a tokenizer_config.json ``chat_template``, is a jinja2 template over
``messages`` (``[{'role': 'system'|'user'|'assistant', 'content': str}]``) in the sandboxed
environment transformers uses, so one code path renders them all.

Which characters are supervised is found by rendering prefixes: for an assistant turn ``i``,
``render(messages[:i], add_generation_prompt=True)`` ends where the answer starts and
``render(messages[:i+1])`` ends after the answer and its end-of-turn token; the difference is the
turn's span. This needs no ``{% generation %}`` markers, works for any template whose renderings of
prefixes are prefixes of the whole (checked, with a clear error otherwise), and includes the
end-of-turn token (``</s>``, ``<|eot_id|>``, ``<|im_end|>``) in the loss.

Built-in templates:
  ``vicuna_v1``  LLaVA-1.5: "SYSTEM USER: q ASSISTANT: a</s>USER: ..."
  ``plain``      LLaVA pre-training: "<image>caption\\n" (user text dropped, caption supervised;
                 a turn's ``<video>`` placeholders kept after its images')
  ``llama3``     Llama 3 headers and <|eot_id|>
  ``chatml``     Qwen: <|im_start|>role\\n...<|im_end|>\\n, default system prompt
  ``internvl``   InternVL 2.5: ChatML with InternVL's system prompt
  ``minigpt4``   MiniGPT-4 (Vicuna v0): "###Human: <Img><image></Img> q ###Assistant: a###", the
                 images first whatever their place in the text, no system prompt
"""

from __future__ import annotations

import dataclasses
import functools
import json

import jinja2
import jinja2.ext
from jinja2 import sandbox

VICUNA_SYSTEM = ('A chat between a curious human and an artificial intelligence assistant. '
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
QWEN_SYSTEM = 'You are a helpful assistant.'
INTERNVL_SYSTEM = ('你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的'
                   '多模态大语言模型。')

# Written with explicit {{ '...' }} strings so that no template whitespace leaks into the text.
_VICUNA_V1 = (
    "{%- set system = default_system -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}{%- endif -%}"
    "{{- system + ' ' -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{- 'USER: ' + m['content'] + ' ' -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- 'ASSISTANT: ' + m['content'] + '</s>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}")

_PLAIN = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{- image_placeholder * (m['content'].count(image_placeholder)) -}}"
    "{{- '<video>' * (m['content'].count('<video>')) -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- m['content'] + '\n' -}}{%- endif -%}"
    "{%- endfor -%}")

_LLAMA3 = (
    "{{- '<|begin_of_text|>' -}}"
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}")

_CHATML = (
    "{%- if default_system and (not messages or messages[0]['role'] != 'system') -%}"
    "{{- '<|im_start|>system\n' + default_system + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}")


# MiniGPT-4's `prompt_template` '###Human: {} ###Assistant: ' around '<Img><ImageHere></Img> '
# + the instruction, the answer closed by its `end_sym` '###'. `<ImageHere>` is where the image's
# query embeddings go: the image placeholder, which the pipeline expands to the image tokens.
_MINIGPT4 = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}"
    "{{- '###Human: ' + ('<Img>' + image_placeholder + '</Img> ') * m['content'].count(image_placeholder)"
    " + m['content'].replace(image_placeholder, '').strip() + ' ' -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- '###Assistant: ' + m['content'] + '###' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '###Assistant: ' -}}{%- endif -%}")


@dataclasses.dataclass(frozen=True)
class TemplateSpec:
  source: str
  default_system: str = ''
  add_special_tokens: bool = False  # Let the tokenizer's post-processor add BOS.


BUILTIN = {
    'vicuna_v1': TemplateSpec(_VICUNA_V1, VICUNA_SYSTEM, add_special_tokens=True),
    'plain': TemplateSpec(_PLAIN, '', add_special_tokens=True),
    'llama3': TemplateSpec(_LLAMA3),
    'chatml': TemplateSpec(_CHATML, QWEN_SYSTEM),
    'internvl': TemplateSpec(_CHATML, INTERNVL_SYSTEM),
    'minigpt4': TemplateSpec(_MINIGPT4, '', add_special_tokens=True),
}


class ChatTemplateError(ValueError):
  """A template that rejected a conversation (``raise_exception``, a sandbox violation, any error
  while rendering) or whose renderings of prefixes are not prefixes: a fault of this sample (the
  pipeline skips it as ``template_error``) or of the template, never of mmjax."""


def _raise(message):
  raise jinja2.exceptions.TemplateError(message)


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
  # The same environment transformers' apply_chat_template uses, so that tokenizer_config.json
  # templates render identically.
  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[_GenerationExtension])
  env.filters['tojson'] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
  env.globals['raise_exception'] = _raise
  return env.from_string(source)


class _GenerationExtension(jinja2.ext.Extension):
  """Accepts HF's ``{% generation %}...{% endgeneration %}`` markers (the spans come from prefixes)."""
  tags = {'generation'}

  def parse(self, parser):
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(('name:endgeneration',), drop_needle=True)
    return jinja2.nodes.Scope(body, lineno=lineno)


class ChatTemplate:
  """A jinja chat template that can also report which characters are assistant output."""

  def __init__(self, spec: TemplateSpec | str, name: str = 'custom', image_placeholder: str = '<image>',
               extra_context: dict | None = None):
    self.spec = TemplateSpec(spec) if isinstance(spec, str) else spec
    self.name = name
    self.image_placeholder = image_placeholder
    self.extra_context = dict(extra_context or {})
    try:  # a template that does not compile fails every sample: say so now, once
      _compile(self.spec.source)
    except jinja2.TemplateError as e:
      raise ValueError(f'chat template {name!r} does not compile: '
                       f'{type(e).__name__}: {e}') from None

  @classmethod
  def from_name(cls, name: str, tokenizer=None, **kw) -> 'ChatTemplate':
    """A built-in template, or ``'tokenizer'`` for the tokenizer_config.json chat_template."""
    if name == 'tokenizer':
      source = tokenizer.chat_template if tokenizer is not None else None
      if not source:
        raise ValueError(f'template "tokenizer" requested but {getattr(tokenizer, "source", "the tokenizer")} '
                         'has no chat_template in tokenizer_config.json')
      context = {k: tokenizer.special_token(k) for k in ('bos_token', 'eos_token', 'pad_token', 'unk_token')}
      return cls(TemplateSpec(source), name=name, extra_context=context, **kw)
    if name not in BUILTIN:
      raise ValueError(f'unknown chat template {name!r}; expected one of {sorted(BUILTIN)} or "tokenizer"')
    return cls(BUILTIN[name], name=name, **kw)

  @property
  def add_special_tokens(self) -> bool:
    return self.spec.add_special_tokens

  def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The rendered text; ChatTemplateError when the template raises."""
    try:
      return _compile(self.spec.source).render(
          messages=messages, add_generation_prompt=add_generation_prompt,
          default_system=self.spec.default_system, image_placeholder=self.image_placeholder,
          **self.extra_context)
    except Exception as e:  # pylint: disable=broad-except
      # The template is code from a tokenizer_config.json: whatever it raises (its own
      # raise_exception, a SecurityError from the sandbox, a TypeError on odd content) is its
      # verdict on this conversation.
      detail = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise ChatTemplateError(f'chat template {self.name!r} rejected the conversation: '
                              f'{type(e).__name__}: {detail}') from None

  def render_with_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Full text and the [start, end) character spans of every assistant turn (+ end of turn)."""
    text = self.render(messages)
    spans = []
    for i, message in enumerate(messages):
      if message['role'] != 'assistant':
        continue
      start_text = self.render(messages[:i], add_generation_prompt=True)
      end_text = self.render(messages[:i + 1])
      if not (end_text.startswith(start_text) and text.startswith(end_text)):
        raise ChatTemplateError(
            f'chat template {self.name!r} is not prefix-consistent at turn {i}: rendering the first '
            f'{i} messages (+ generation prompt) is not a prefix of the whole conversation, so the '
            'assistant tokens cannot be located')
      if len(end_text) > len(start_text):
        spans.append((len(start_text), len(end_text)))
    return text, spans


# Turns transformers processors' structured contents ([{'type': 'image'}, {'type': 'text', ...}])
# into the text the training data held: one placeholder and a newline per image, then the text.
_STRUCTURED_TO_TEXT = (
    "{%- set converted = namespace(messages=[]) -%}"
    "{%- for m in messages -%}"
    "{%- if m['content'] is string -%}{%- set converted.messages = converted.messages + [m] -%}"
    "{%- else -%}{%- set text = namespace(value='') -%}"
    "{%- for part in m['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set text.value = text.value + image_placeholder + '\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set text.value = text.value + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set converted.messages = converted.messages + [{'role': m['role'], 'content': text.value}] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = converted.messages -%}")


def standalone_source(name: str, tokenizer=None, image_placeholder: str = '<image>') -> str:
  """The jinja source of template ``name`` as a tokenizer_config.json ``chat_template``: it
  renders what training rendered with no mmjax variables (the system prompt and placeholder are
  written in) and takes string or structured contents, as transformers' processors pass them."""
  if name == 'tokenizer':
    return ChatTemplate.from_name(name, tokenizer).spec.source
  if name not in BUILTIN:
    raise ValueError(f'unknown chat template {name!r}; expected one of {sorted(BUILTIN)} or "tokenizer"')
  spec = BUILTIN[name]
  settings = (f"{{%- set default_system = {json.dumps(spec.default_system, ensure_ascii=False)} -%}}"
              f"{{%- set image_placeholder = {json.dumps(image_placeholder)} -%}}")
  return settings + _STRUCTURED_TO_TEXT + spec.source

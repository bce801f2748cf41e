"""A tiny converted LLaVA with a tokenizer, chat template and image processor (what chat mode
and `mmjax eval` need), its transformers twin and processor, and a few question images."""

import dataclasses

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from hf_models import clip_vision_config, llava_config, save, text_config
from mmjax.convert.importer import convert_hf
from mmjax.data.tokenizer import train_tiny_tokenizer

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ ' ' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
CORPUS = ["what shape is in the picture", "a red square on a blue ground", "the cat sat",
          "which colour is the circle", "how many dogs are there"] * 30


@dataclasses.dataclass
class ChatLlava:
  ckpt: str
  model: transformers.LlavaForConditionalGeneration
  processor: transformers.LlavaProcessor
  images: list  # paths of small PNGs of different sizes

  def hf_inputs(self, prompt: str, images: list):
    """The processor's tensors for one chat turn, as transformers' docs build them."""
    content = [{"type": "image"}] * len(images) + [{"type": "text", "text": prompt}]
    text = self.processor.apply_chat_template([{"role": "user", "content": content}],
                                              add_generation_prompt=True)
    pil = [Image.open(p) for p in images] or None
    return self.processor(images=pil, text=text, return_tensors="pt")

  def hf_answer(self, prompt: str, images: list, max_new_tokens: int) -> str:
    """transformers' greedy answer, decoded as chat mode decodes it."""
    inputs = self.hf_inputs(prompt, images)
    with torch.no_grad():
      out = self.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=0)
    tok = self.processor.tokenizer
    return tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

  def hf_loglik(self, prompt: str, images: list, continuation_ids) -> float:
    """Summed log-probabilities of `continuation_ids` after the prompt (one full forward)."""
    inputs = self.hf_inputs(prompt, images)
    cont = torch.tensor([list(continuation_ids)])
    ids = torch.cat([inputs["input_ids"], cont], dim=1)
    kw = {"pixel_values": inputs["pixel_values"]} if "pixel_values" in inputs else {}
    with torch.no_grad():
      logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), **kw).logits
    logp = torch.log_softmax(logits[0, -cont.shape[1] - 1:-1].double(), dim=-1)
    return float(logp.gather(1, cont.T).sum())


@pytest.fixture(scope="session")
def chat_llava(tmp_path_factory) -> ChatLlava:
  tmp = tmp_path_factory.mktemp("chat_llava")
  tok = train_tiny_tokenizer(CORPUS, vocab_size=400)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
      pad_token="<unk>", extra_special_tokens={"image_token": "<image>"})
  image_processor = transformers.CLIPImageProcessorPil(
      size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
  processor = transformers.LlavaProcessor(
      image_processor=image_processor, tokenizer=fast, patch_size=8, chat_template=CHAT_TEMPLATE,
      vision_feature_select_strategy="default", num_additional_image_tokens=1)
  torch.manual_seed(3)
  hf_cfg = llava_config(clip_vision_config(), text_config("llama", vocab_size=tok.get_vocab_size(),
                                                          eos_token_id=2, bos_token_id=1),
                        image_token_id=tok.token_to_id("<image>"))
  hf_dir = save(transformers.LlavaForConditionalGeneration(hf_cfg), str(tmp / "hf"), seed=3)
  processor.save_pretrained(hf_dir)
  convert_hf(hf_dir, str(tmp / "mm"), progress=False)
  model = transformers.LlavaForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  rng = np.random.default_rng(0)
  images = []
  for i, size in enumerate([(40, 56), (48, 36), (32, 32)]):
    images.append(str(tmp / f"img{i}.png"))
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images[-1])
  return ChatLlava(str(tmp / "mm"), model, processor, images)

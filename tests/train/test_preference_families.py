"""Pair batches of other families through the data pipeline and the preference forward: the
answers' log-probabilities with the images encoded once per pair row (`answer_logprobs`, the
chunked LM head) equal each answer's own train forward with its images (dense logits): Qwen2-VL
(flattened patches, M-RoPE positions) and Llama 3.2 Vision (cross-attention to image states);
LLaVA's tiles: `test_preference_loss.py`."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mmjax.data.pairs import ANSWER_KEYS
from mmjax.data.pipeline import DataConfig, make_iterator
from mmjax.data.tokenizer import Tokenizer, train_tiny_tokenizer
from mmjax.train.cli import load_config
from mmjax.train.logprobs import token_logprobs
from mmjax.train.model_config import build_model_config
from mmjax.train.preference_step import answer_logprobs
from mmjax.train.step import forward

TINY = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "tiny")
CORPUS = ["system You are a helpful assistant. user assistant What is in the picture? "
          "A red square on a blue background. Two shapes, one green."] * 20
# family -> (tiny config, special tokens, image token, data overrides)
FAMILIES = {
    "qwen2_vl": ("qwen2_vl.py", ("<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                 "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
                 "<|image_pad|>", dict(max_length=160, max_tiles=256, batch_size=2)),
    "mllama": ("mllama.py", ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                             "<|eot_id|>", "<|image|>"), "<|image|>",
               dict(image_preset="mllama", image_overrides=dict(size=32, max_tiles=1),
                    template="llama3", image_token="<|image|>", max_length=96, max_tiles=2,
                    max_images=2, batch_size=2)),
}


def _pairs(tmp_path, specials):
  tok = tmp_path / "tok"
  tok.mkdir()
  train_tiny_tokenizer(CORPUS, special_tokens=("<unk>", "<s>", "</s>", *specials),
                       vocab_size=300).save(str(tok / "tokenizer.json"))
  rng = np.random.default_rng(0)
  records = []
  for i, (h, w) in enumerate([(32, 48), (40, 40), (48, 32), (32, 32)]):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    records.append({"id": f"p{i}", "image": f"{i}.png", "prompt": "What is in the picture?",
                    "chosen": "A red square." * (1 + i % 2), "rejected": "Two shapes, one green."})
  path = tmp_path / "pairs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(tok), str(path)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_images_encoded_once_give_each_answers_own_log_probabilities(name, tmp_path):
  config_file, specials, image_token, data = FAMILIES[name]
  tok_dir, path = _pairs(tmp_path, specials)
  cfg = load_config(os.path.join(TINY, config_file))
  tokenizer = Tokenizer.load(tok_dir)
  model = dict(cfg.model.to_dict(), image_token_id=tokenizer.token_to_id(image_token))
  model["decoder"]["vocab_size"] = 320
  family, model_config = build_model_config(model, None)
  module = family.build(model_config)
  example = family.example_inputs(model_config)
  params = nn.unbox(jax.jit(module.init)(jax.random.PRNGKey(0), *example)["params"])
  base = {} if cfg.data.get("source") == "shapes" else cfg.data.to_dict()
  config = DataConfig.from_dict({**base, **data, "tokenizer": tok_dir, "pairs": True,
                                 "sources": [{"path": path}], "shuffle": False})
  batch = {k: jnp.asarray(v) for k, v in next(make_iterator(config, tokenizer)).items()}
  assert batch["input_ids"].shape[:2] == (2, 2) and int(batch["segment_ids"].max()) >= 2

  got = jax.jit(lambda p, b: answer_logprobs(module, p, b, None, None, 8))(params, batch)
  shared = {k: v for k, v in batch.items() if k not in ANSWER_KEYS}

  @jax.jit
  def alone(p, rows):  # one answer's rows with their images, dense logits
    return token_logprobs(forward(module, p, rows), rows["labels"], rows["loss_mask"])

  for a in range(2):
    rows = {**shared, **{k: v[:, a] for k, v in batch.items() if k in ANSWER_KEYS}}
    want = alone(params, rows)
    assert float(jnp.sum(rows["loss_mask"])) > 0 and float(jnp.min(want)) < -1
    np.testing.assert_allclose(got[:, a], want, atol=1e-5, rtol=0)

"""MiniGPT-4 as a composition (`configs/minigpt4/minigpt4_vicuna7b.py`, narrowed): a BLIP-2
checkpoint's tower and Q-Former, a Llama checkpoint's decoder and a fresh projection, of which
only the projection trains; the release's `llama_proj` importer (`mmjax minigpt4-projection`)
and the `minigpt4` prompt template."""

import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch

from mmjax import checkpoint as converted
from mmjax.cli import main as mmjax_main
from mmjax.convert import minigpt4
from mmjax.data import synthetic
from mmjax.data.templates import ChatTemplate
from mmjax.models.registry import family_named
from mmjax.train.cli import add_optional_keys, load_config
from mmjax.train.loop import Trainer, train
from mmjax.train.model_config import build_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NARROW = dict(hidden_size=32, intermediate_size=64, num_heads=2)
LLAMA = dict(vocab_size=64, hidden_size=48, intermediate_size=64, num_layers=2, num_heads=4,
             num_kv_heads=2, head_dim=12)


def _config():
  cfg = load_config(os.path.join(ROOT, "configs", "minigpt4", "minigpt4_vicuna7b.py"))
  add_optional_keys(cfg)
  cfg.model.update(dtype="float32", remat_policy="none", image_token_id=synthetic.IMAGE_ID)
  cfg.model.vision.update(image_size=32, patch_size=16, num_layers=1, **NARROW)
  cfg.model.qformer.update(num_layers=2, num_queries=4, **NARROW)
  cfg.model.decoder.update(LLAMA)
  # The shapes set's question-answer rows (the template is for real data; tested below).
  cfg.data = dict(source="shapes", batch_size=16, max_length=16, train_size=1000,
                  image_first=True, shapes=dict(size_range=0, jitter=0))
  cfg.optim.update(lr=1e-2, warmup_steps=1)
  cfg.train.update(steps=3, log_every=1)
  cfg.checkpoint.every_steps = 10
  return cfg


def _save_random(path, family_name, config, seed):
  family = family_named(family_name)
  params = family.build(config).init(jax.random.PRNGKey(seed), *family.example_inputs(config))
  converted.save_checkpoint(path, family, config, jax.device_get(nn.unbox(params["params"])))
  return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("minigpt4")
  cfg = _config()
  _, config = build_model_config(dict(cfg.model))
  # A BLIP-2 with an OPT of another width (its decoder and projection are not read) and a Llama.
  import dataclasses
  from mmjax.decoders.config import DecoderConfig

  opt = DecoderConfig.from_hf(dict(model_type="opt", vocab_size=64, hidden_size=32, ffn_dim=64,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   max_position_embeddings=32))
  blip2 = _save_random(str(tmp / "blip2"), "blip-2", dataclasses.replace(config, decoder=opt), 1)
  llama = _save_random(str(tmp / "llama"), "causal_lm", config.decoder, 2)
  cfg.train.init_from = f"{blip2}:encoder,connector/qformer;{llama}:decoder"
  summary = train(cfg, str(tmp / "run"))
  return dict(cfg=cfg, blip2=blip2, llama=llama, tmp=tmp, model=summary["model_dir"])


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_composition_trains_only_the_projection(run):
  trained = converted.load_params(run["model"])
  blip2, llama = converted.load_params(run["blip2"]), converted.load_params(run["llama"])
  _equal(trained["encoder"], blip2["encoder"])
  _equal(trained["connector"]["qformer"], blip2["connector"]["qformer"])
  _equal(trained["decoder"], llama["decoder"])
  fresh = jax.device_get(Trainer.build(run["cfg"], jax.devices()[:1]).init().params)
  assert list(fresh) == ["connector"] and list(fresh["connector"]) == ["projection"]
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), trained["connector"]["projection"],
                       fresh["connector"]["projection"])
  assert min(jax.tree.leaves(moved)) > 0, moved


def _pth(path, weight, bias, nested=True, extra=True):
  state = {"llama_proj.weight": torch.from_numpy(weight), "llama_proj.bias": torch.from_numpy(bias)}
  if extra:
    state["other.weight"] = torch.zeros(2)
  torch.save({"model": state, "optimizer": {}} if nested else state, path)
  return str(path)


def test_the_release_projection_round_trips_exactly(run, capsys):
  tmp = run["tmp"]
  rng = np.random.default_rng(0)
  weight = rng.standard_normal((48, 32)).astype(np.float32)  # [Vicuna width, Q-Former width]
  bias = rng.standard_normal(48).astype(np.float32)
  pth = _pth(tmp / "minigpt4.pth", weight, bias)
  assert mmjax_main(["minigpt4-projection", "--pth", pth, "--checkpoint", run["model"],
                     "--out", str(tmp / "with_release")]) == 0
  params = converted.load_params(str(tmp / "with_release"))
  np.testing.assert_array_equal(params["connector"]["projection"]["kernel"], weight)
  np.testing.assert_array_equal(params["connector"]["projection"]["bias"], bias)
  _equal(params["decoder"], converted.load_params(run["model"])["decoder"])
  # As a parameters-only source: the third part of the composition.
  flat = _pth(tmp / "flat.pth", weight, bias, nested=False, extra=False)
  assert mmjax_main(["minigpt4-projection", "--pth", flat, "--out", str(tmp / "proj")]) == 0
  cfg = run["cfg"]
  cfg.train.init_from += f";{tmp / 'proj'}:connector/projection"
  state = jax.device_get(Trainer.build(cfg, jax.devices()[:1]).init())
  assert "randomly initialised []" in capsys.readouterr().out
  np.testing.assert_array_equal(state.params["connector"]["projection"]["kernel"], weight)


def test_bad_projection_files_are_refused(run, capsys):
  tmp = run["tmp"]
  w, b = np.zeros((48, 32), np.float32), np.zeros(48, np.float32)
  torch.save({"model": {"llama_proj.weight": torch.zeros(48, 32)}}, tmp / "no_bias.pth")
  with pytest.raises(Exception, match=r"\['llama_proj.bias'\] missing; keys with 'proj': "
                     r"\['llama_proj.weight'\]"):
    minigpt4.read_projection(str(tmp / "no_bias.pth"))
  with pytest.raises(Exception, match="must be \\[out, in\\]"):
    minigpt4.read_projection(_pth(tmp / "bad_bias.pth", w, np.zeros(47, np.float32)))
  wide = _pth(tmp / "wide.pth", np.zeros((64, 32), np.float32), np.zeros(64, np.float32))
  assert mmjax_main(["minigpt4-projection", "--pth", wide, "--checkpoint", run["model"],
                     "--out", str(tmp / "never")]) == 1
  assert "connector/projection/kernel is [48, 32], the release's llama_proj.weight [64, 32]" in \
      capsys.readouterr().err and not os.path.exists(tmp / "never")
  torch.save([torch.zeros(1)], tmp / "list.pth")
  with pytest.raises(Exception, match="not a state dict"):
    minigpt4.read_projection(str(tmp / "list.pth"))
  torch.save({"model": _Pickled()}, tmp / "code.pth")  # weights_only refuses pickled objects
  with pytest.raises(Exception, match="weights_only=True"):
    minigpt4.read_projection(str(tmp / "code.pth"))


class _Pickled:
  pass


def test_the_prompt_template():
  template = ChatTemplate.from_name("minigpt4")
  question = [{"role": "user", "content": "<image>\nDescribe this image in detail."}]
  prompt = template.render(question, add_generation_prompt=True)
  assert prompt == "###Human: <Img><image></Img> Describe this image in detail. ###Assistant: "
  text, spans = template.render_with_spans(question + [{"role": "assistant", "content": "A cat."}])
  assert text == prompt + "A cat.###" and [text[a:b] for a, b in spans] == ["A cat.###"]


def test_chat_mode_renders_the_template_it_trained_with(run, tmp_path):
  """A trained composition carries its chat template: chat mode renders the prompt with it and
  expands its `<image>` to the queries' tokens (Blip2Processor's layout only without it)."""
  from PIL import Image

  family, config, _ = converted.read_metadata(run["model"])
  image = str(tmp_path / "image.png")
  Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
  builder = family.prompt_builder(run["model"], config)
  ids, pixels = builder("what shape is it?", [image])
  text = builder.text("what shape is it?", 1)
  assert text.count("<image>") == 1 and not text.startswith("<image>")
  expected = builder.token_ids(text)
  expected = np.concatenate([[i] * (config.tokens_per_image if i == config.image_token_id else 1)
                             for i in expected])
  np.testing.assert_array_equal(ids[0], expected)
  assert pixels.shape == (1, config.vision.image_size, config.vision.image_size, 3)
  plain_ids, _ = family.prompt_builder(run["model"], config, chat_template=False)(
      "what shape is it?", [image])
  assert list(plain_ids[0, :config.tokens_per_image]) == [config.image_token_id] * 4

"""IDEFICS through `mmjax train` with Flamingo's recipe (`configs/tiny/idefics.py` on the
interleaved shapes documents, 8 fake devices): falling loss, gates that open from zero, the tower
and the language model bit for bit frozen, exact resume. And, cheaply: the media mask from the
image tokens, documents -> samples (layout, targets, truncation at chunk boundaries), packing that
keeps documents whole, sources mixed by weight, a fresh model equal to its language model."""

import dataclasses
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.checkpoint import load_checkpoint
from mmjax.data import synthetic_documents as sd
from mmjax.data.pipeline import DataConfig, build_dataset, mixed_sources
from mmjax.data.records import to_raw_sample
from mmjax.data.sample import SampleProcessor
from mmjax.data.sources import normalize_record
from mmjax.data.tokenizer import Tokenizer
from mmjax.decoders.llama import Decoder
from mmjax.generation.idefics_prompt import image_attention_mask as processor_mask
from mmjax.models.idefics import image_attention_mask
from mmjax.train.cli import load_config
from mmjax.train.loop import Trainer, train

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "configs", "tiny", "idefics.py")
STEPS = 6
GATED = re.compile(r"decoder/layers(_\d+)?/gated_cross_\d+/.*")


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
  return sd.write_set(str(tmp_path_factory.mktemp("shapes_docs")), num=64, captions=16)


@pytest.fixture(scope="module")
def tokenizer(docs):
  return Tokenizer.load(os.path.join(docs, "tokenizer"))


def tiny_config(docs):
  cfg = load_config(f"{CONFIG}:{docs}")
  cfg.optim.warmup_steps = 1
  cfg.train.update(steps=STEPS, log_every=1)
  cfg.checkpoint.every_steps = 3
  return cfg


def _paths(tree):
  return {"/".join(k.key for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


@pytest.fixture(scope="module")
def runs(docs, tmp_path_factory):
  """A straight run, the same run resumed from its step-3 checkpoint (as after a preemption
  there: a run of its own from then on), and the parameters both start from."""
  assert jax.device_count() == 8
  work = tmp_path_factory.mktemp("idefics_runs")
  cfg = tiny_config(docs)
  straight = train(cfg, str(work / "straight"))
  shutil.copytree(work / "straight" / "checkpoints" / "3", work / "resumed" / "checkpoints" / "3")
  resumed = train(cfg, str(work / "resumed"))
  trainer = Trainer.build(cfg)
  before = jax.device_get(trainer.init().all_params())
  _, _, after = load_checkpoint(str(work / "straight" / "model"))
  return dict(cfg=cfg, trainer=trainer, before=before, after=after, summaries=(straight, resumed),
              losses=(_losses(work / "straight"), _losses(work / "resumed")))


def test_recipe_trains_on_8_devices_and_resumes_exactly(runs):
  straight, resumed = runs["summaries"]
  assert straight["final_step"] == STEPS and straight["skipped"] == 0
  assert not straight["skipped_samples"]  # every document fits whole
  assert resumed["start_step"] == 3 and resumed["final_step"] == STEPS
  a, b = runs["losses"]
  assert [a[s] for s in range(4, STEPS + 1)] == [b[s] for s in range(4, STEPS + 1)]
  assert np.isfinite(list(a.values())).all() and a[STEPS] < a[1], a


def test_gates_open_and_only_the_recipe_parts_train(runs):
  trainer = runs["trainer"]
  trained = _paths(trainer.abstract_state.params)
  assert all(p.startswith("connector/") or GATED.fullmatch(p)
             or re.fullmatch(r"decoder/(embed|lm_head)_additional/.*", p) for p in trained)
  before, after = _paths(runs["before"]), _paths(runs["after"])
  gates = {p: (np.tanh(before[p]), np.tanh(after[p])) for p in before if p.endswith("_gate")}
  print({p: (s.tolist(), e.tolist()) for p, (s, e) in gates.items()})  # the report's figures
  assert len(gates) == 2  # attn_gate and mlp_gate of the scanned gated slot ([2, 1] each)
  for start, end in gates.values():
    assert np.all(start == 0) and np.all(end != 0)  # zero at init, open after training
  for path, value in before.items():
    moved = bool(np.any(after[path] != value))
    if path.startswith("encoder/") or (path.startswith("decoder/") and path not in trained):
      assert not moved, path  # the tower and the language model, bit for bit
    elif path in trained:
      assert moved, path  # the resampler, the gated layers, the new rows


def _compiled(fn, example):
  """`jax.jit(fn)` compiled at XLA:CPU's lighter optimisation level (a third of the compile
  time, as `Trainer.init` does)."""
  return jax.jit(fn).lower(example).compile({"xla_backend_optimization_level": 1})


def test_a_fresh_model_is_its_language_model(runs):
  """Zero gates: the logits of a packed batch with images are the language model's, bit for bit;
  with the attention gates open, tokens before their document's first image still are."""
  trainer, params = runs["trainer"], runs["before"]
  config, family = trainer.model_config, trainer.family
  i, f, bos, eos = config.image_token_id, config.decoder.vocab_size, 1, 2
  row = [bos, 10, 11, f, i, f, 12, eos, bos, 15, f, i, f, 16, f, i, f, 17, eos, 0]
  segments = np.asarray([[1] * 8 + [2] * 11 + [0]] * 2)
  positions = np.asarray([list(range(8)) + list(range(11)) + [0]] * 2)
  batch = {"input_ids": jnp.asarray([row, row]), "segment_ids": jnp.asarray(segments),
           "positions": jnp.asarray(positions), "attention_mask": jnp.asarray(segments > 0),
           "pixel_values": jax.random.normal(jax.random.PRNGKey(1), (8, 32, 32, 3))}
  module = family.build(config)
  forward = _compiled(lambda p: family.train_forward(module, p, batch), params)

  lm = Decoder(dataclasses.replace(config.decoder, num_layers=2, cross_attention_layers=()))
  text = {k: v for k, v in params["decoder"].items() if k != "layers"}
  text["layers"] = params["decoder"]["layers"]["self_1"]  # the text layers, without the gated
  reference = np.asarray(_compiled(lambda p: lm.apply(
      {"params": p}, lm.apply({"params": p}, batch["input_ids"], method=Decoder.embed),
      batch["positions"], batch["attention_mask"], batch["segment_ids"]).logits, text)(text))
  np.testing.assert_array_equal(np.asarray(forward(params)), reference)

  opened = jax.tree_util.tree_map_with_path(
      lambda path, x: jnp.full_like(x, 0.5) if path[-1].key == "attn_gate" else x, params)
  moved = np.any(np.asarray(forward(opened)) != reference, axis=-1)[0]  # [T]
  before_images = [0, 1, 2, 3, 8, 9, 10]  # BOS, text and the opening wrapper of each document
  assert not moved[before_images].any() and moved[[4, 5, 6, 7, 11, 12, 13]].all()


def test_media_mask_follows_the_image_tokens_within_each_document():
  """Each token sees the latest image at or before it in its own packed document (what
  IdeficsProcessor computes for that document alone); tokens before it and padding see none."""
  i, f, eos = 9, 8, 2
  first = [1, 5, f, i, f, 6, f, i, f, i, f, 7, eos]  # consecutive images share a wrapper
  second = [1, 5, 6, f, i, f, 7, eos]
  ids = np.asarray([first + second + [0, 0]])
  segments = np.asarray([[1] * len(first) + [2] * len(second) + [0, 0]])
  mask = np.asarray(image_attention_mask(jnp.asarray(ids), i, jnp.asarray(segments), 4))[0]
  expected = np.zeros_like(mask)
  expected[:len(first), :3] = processor_mask(np.asarray(first), i, eos, 3)
  expected[len(first):len(first) + len(second), 3:] = processor_mask(np.asarray(second), i, eos, 1)
  np.testing.assert_array_equal(mask, expected)
  assert mask[[0, 1, 2, 13, 14, 15, 21, 22]].sum() == 0  # before the images, padding
  assert mask[17:21, 3].all() and mask[11, 2] and not mask[11, :2].any()


def _data(docs, **changes):
  data = tiny_config(docs).data.to_dict()
  data.update(changes)
  return DataConfig.from_dict(data)


def test_documents_become_samples_cut_at_chunk_boundaries(docs, tokenizer):
  tok = tokenizer.token_to_id
  f, i, eoc = tok("<fake_token_around_image>"), tok("<image>"), tok("<|endofchunk|>")
  bos, eos = tok("<s>"), tok("</s>")
  image = np.zeros((32, 32, 3), np.uint8)
  text = "how many shapes ?<image><image>red circle<|endofchunk|><image>blue square , green cross<|endofchunk|>"
  raw = normalize_record({"id": "d", "text": text, "images": [image] * 3}, 0)
  words = lambda s: [tok(w) for w in s.split()]
  ex = SampleProcessor(_data(docs), tokenizer)(raw)
  chunk1 = [f, i, f, i, f] + words("red circle") + [eoc]  # IdeficsProcessor's shared wrapper
  chunk2 = [f, i, f] + words("blue square , green cross") + [eoc]
  ids = [bos] + words("how many shapes ?") + chunk1 + chunk2 + [eos]
  np.testing.assert_array_equal(ex["input_ids"], ids)
  np.testing.assert_array_equal(ex["labels"][:-1], ids[1:])
  is_text = ~np.isin(ids, [f, i])
  np.testing.assert_array_equal(ex["loss_mask"], np.append(is_text[1:], False))  # eoc, EOS too
  assert ex["pixel_values"].shape == (3, 32, 32, 3)

  # Too long: cut where the chunk that does not fit begins (its wrapper), its image dropped.
  short = SampleProcessor(_data(docs, max_length=len(ids) - 2), tokenizer)(raw)
  np.testing.assert_array_equal(short["input_ids"], ids[:1 + 4 + len(chunk1)])
  assert short["pixel_values"].shape[0] == 2
  # More images than a row holds: whole chunks up to the budget; the shared wrapper stays.
  few = SampleProcessor(_data(docs, max_images=1, max_tiles=1), tokenizer)(raw)
  np.testing.assert_array_equal(few["input_ids"], ids[:1 + 4 + 3])
  assert few["pixel_values"].shape[0] == 1

  # OBELICS' aligned lists, and a Parquet / WebDataset row: the same document.
  obelics = {"texts": ["how many shapes ?", None, None, "red circle<|endofchunk|>", None,
                       "blue square , green cross<|endofchunk|>"],
             "images": [None, image, image, None, image, None]}
  assert normalize_record(obelics, 0)["text"] == text
  row = to_raw_sample({"text": text, "images": [image] * 3}, "row")
  assert row["text"] == text and len(row["images"]) == 3
  assert normalize_record({"text": text, "images": [image]}, 0)["text"] == text
  with pytest.raises(Exception, match="image_count_mismatch"):
    SampleProcessor(_data(docs), tokenizer)(normalize_record({"text": text, "images": [image]}, 0))


def test_packing_keeps_each_document_whole_with_its_images(docs, tokenizer):
  cfg = _data(docs, batch_size=4, shuffle=False)
  batch = next(iter(build_dataset(cfg, tokenizer, [sd.ShapesDocuments(32)], process_index=0,
                                  process_count=1)))
  bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
  image_id = tokenizer.token_to_id("<image>")
  slots = batch["image_segment_ids"].reshape(4, cfg.max_images)
  assert (batch["segment_ids"].max(axis=1) > 1).any()  # rows hold several documents
  for ids, segments, row_slots in zip(batch["input_ids"], batch["segment_ids"], slots):
    for s in range(1, segments.max() + 1):
      doc = ids[segments == s]
      assert doc[0] == bos and doc[-1] == eos  # whole: nothing cut or split between rows
      assert np.sum(doc == image_id) == np.sum(row_slots == s)  # its images in its row
    # The k-th image token of the row is the k-th image slot, of the same document.
    np.testing.assert_array_equal(segments[ids == image_id], row_slots[row_slots > 0])

  from mmjax.models.registry import family_named
  family = family_named("idefics")
  config = family.config_from_training(dict(tiny_config(docs).model))
  abstract = family.abstract_train_batch(config, dict(batch_size=4, max_length=cfg.max_length,
                                                      max_tiles=cfg.max_tiles), jax.ShapeDtypeStruct)
  for key, spec in abstract.items():
    assert np.shape(batch[key]) == spec.shape, key


def test_sources_mix_by_weight(tmp_path):
  """Flamingo's mixture: data.sources weights 1.0 / 0.2 / 0.2 / 0.03 draw in that proportion."""
  weights = (1.0, 0.2, 0.2, 0.03)
  sources = []
  for k, w in enumerate(weights):
    path = tmp_path / f"source{k}.jsonl"
    path.write_text("".join(json.dumps({"id": f"{k}/{n}", "text": "red"}) + "\n"
                            for n in range(7 + k)))
    sources.append({"path": str(path), "weight": w})
  cfg = DataConfig.from_dict(dict(sources=sources, shuffle=False))
  mixed = mixed_sources(cfg, process_index=0, process_count=1)
  draws = 1430  # 1000, 200, 200 and 30 expected
  counts = np.bincount([int(mixed[n]["id"].split("/")[0]) for n in range(draws)], minlength=4)
  expected = np.asarray(weights) / sum(weights) * draws
  assert np.all(np.abs(counts - expected) <= 2), (counts, expected)


def test_image_token_settings(docs, tokenizer):
  """A converted checkpoint takes `model.image_token_id` from the training config (its
  config.json has none); the pipeline's image token must be the model's."""
  from mmjax.models.registry import family_named
  from mmjax.train.model_config import build_model_config

  family = family_named("idefics")
  model = tiny_config(docs).model.to_dict()
  config = family.config_from_training(model)
  bare = dataclasses.replace(config, image_token_id=None)  # as `config_from_hf` reads it
  _, trained = build_model_config({"image_token_id": 3, "dtype": "float32"}, (family, bare))
  assert trained.image_token_id == 3 and trained.decoder == config.decoder
  family.check_training_data(config, _data(docs), tokenizer)
  with pytest.raises(ValueError, match="model.image_token_id"):
    family.check_training_data(config, _data(docs, image_token="<s>"), tokenizer)
  with pytest.raises(ValueError, match="max_tiles"):
    family.check_training_data(config, _data(docs, max_tiles=8), tokenizer)

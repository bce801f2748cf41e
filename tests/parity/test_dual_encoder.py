"""CLIP / SigLIP dual encoders: image and text embeddings and `logits_per_image` equal
transformers' `CLIPModel` / `SiglipModel` on padded batches of texts of different lengths."""

import jax
import numpy as np
import pytest
import torch
import transformers

from hf_models import TOLERANCE, dual_encoder_config, max_diff, record, save
from mmjax import cli
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf

# name -> (HF config, token ids: (bos, eos, pad, lowest word id), padding to max length, mask)
CASES = {
    # eos_token_id 2: transformers pools at the largest id (here the EOS, the vocabulary's last).
    "clip_legacy_eos": (lambda: dual_encoder_config(
        "clip", text=dict(eos_token_id=2), projection_dim=16), (97, 98, 1, 3), False, True),
    # The first EOS, with padding made of EOS tokens as CLIP's tokenizer pads.
    "clip_eos_gelu": (lambda: dual_encoder_config(
        "clip", text=dict(eos_token_id=5, bos_token_id=4, hidden_size=48, intermediate_size=80,
                          hidden_act="gelu", vocab_size=77),
        vision=dict(hidden_act="gelu", patch_size=4, image_size=16), projection_dim=24),
        (4, 5, 5, 6), False, True),
    # SiglipProcessor pads to max length and makes no attention mask.
    "siglip_text_wider": (lambda: dual_encoder_config(
        "siglip", text=dict(hidden_size=48, intermediate_size=96, projection_size=32,
                            vocab_size=120)), (None, 1, 1, 2), True, False),
    "siglip_masked": (lambda: dual_encoder_config(
        "siglip", text=dict(vocab_size=64, max_position_embeddings=12, hidden_act="gelu"),
        vision=dict(num_hidden_layers=3)), (None, 1, 1, 2), True, True),
}
LENGTHS = (3, 9, 6)  # words per text


def texts(cfg, ids, max_length: bool, rng):
  """`input_ids [N, L]` and `attention_mask [N, L]` padded on the right (to the model's length
  when `max_length`, as SiglipProcessor's padding='max_length')."""
  bos, eos, pad, low = ids
  vocab = cfg.text_config.vocab_size
  rows = [([bos] if bos is not None else []) + list(rng.integers(low, vocab - 2, n)) + [eos]
          for n in LENGTHS]
  length = cfg.text_config.max_position_embeddings if max_length else max(map(len, rows))
  input_ids = np.full((len(rows), length), pad, np.int64)
  mask = np.zeros_like(input_ids)
  for i, row in enumerate(rows):
    input_ids[i, :len(row)], mask[i, :len(row)] = row, 1
  return input_ids, mask


_PREPARED = {}


def prepare(name, tmp_path_factory):
  """(name, root with hf/ and mm/, processor arrays, transformers' output), once per case."""
  if name not in _PREPARED:
    _PREPARED[name] = _prepare(name, tmp_path_factory)
  return _PREPARED[name]


def _prepare(name, tmp_path_factory):
  make_config, ids, max_length, use_mask = CASES[name]
  cfg = make_config()
  cls = transformers.CLIPModel if name.startswith("clip") else transformers.SiglipModel
  root = tmp_path_factory.mktemp(name)
  hf_dir = save(cls(cfg), str(root / "hf"))
  convert_hf(hf_dir, str(root / "mm"), progress=False)
  rng = np.random.default_rng(3)
  input_ids, mask = texts(cfg, ids, max_length, rng)
  size = cfg.vision_config.image_size
  inputs = {"input_ids": input_ids,
            "pixel_values": rng.normal(size=(2, 3, size, size)).astype(np.float32)}
  if use_mask:
    inputs["attention_mask"] = mask
  model = cls.from_pretrained(hf_dir, attn_implementation="eager").eval()
  with torch.no_grad():
    ref = model(**{k: torch.tensor(v) for k, v in inputs.items()})
  return name, root, inputs, ref


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
  return prepare(request.param, tmp_path_factory)


def test_embeddings_and_logits_match_transformers(case):
  name, root, inputs, ref = case
  family, config, params = load_checkpoint(str(root / "mm"))
  module = family.build(config)
  out = jax.jit(lambda p, *args: module.apply({"params": p}, *args))(
      params, inputs["pixel_values"].transpose(0, 2, 3, 1), inputs["input_ids"],
      inputs.get("attention_mask"))
  logits = out.logits_per_image()
  assert logits.dtype == np.float32 and logits.shape == (2, len(LENGTHS))
  diffs = {"logits_per_image": max_diff(logits, ref.logits_per_image.numpy()),
           "image_embeds": max_diff(out.image_embeds, ref.image_embeds.numpy()),
           "text_embeds": max_diff(out.text_embeds, ref.text_embeds.numpy())}
  for part, diff in diffs.items():
    record(f"dual_encoder/{name}/{part}", diff)
  assert max(diffs.values()) <= TOLERANCE, diffs
  norms = np.linalg.norm(np.asarray(out.text_embeds), axis=-1)
  np.testing.assert_allclose(norms, 1.0, atol=1e-6)


def test_mmjax_logits_writes_logits_per_image(tmp_path_factory, tmp_path):
  _, root, inputs, ref = prepare("clip_eos_gelu", tmp_path_factory)
  np.savez(tmp_path / "inputs.npz", **inputs)
  out = str(tmp_path / "logits.npy")
  assert cli.main(["logits", "--checkpoint", str(root / "mm"), "--inputs",
                   str(tmp_path / "inputs.npz"), "--out", out]) == 0
  logits = np.load(out)
  assert logits.dtype == np.float32 and logits.shape == (2, len(LENGTHS))
  assert max_diff(logits, ref.logits_per_image.numpy()) <= TOLERANCE

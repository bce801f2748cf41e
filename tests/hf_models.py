"""Tiny random transformers models for parity tests, built and saved locally.

Every weight gets random noise before saving, so a dropped, swapped or transposed tensor changes
the outputs and cannot pass by luck (fresh HF inits leave norms at 1 and biases at 0).
"""

import json
import os

import numpy as np
import torch
import transformers

TOLERANCE = 1e-4  # max abs diff of float32 outputs, never loosened


def add_noise(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in sorted(model.named_parameters()):
      p.add_(torch.randn(p.shape, generator=gen) * scale)
  return model


def clip_vision_config(**kw):
  base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=32, patch_size=8)
  return transformers.CLIPVisionConfig(**{**base, **kw})


def siglip_vision_config(**kw):
  base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=32, patch_size=8)
  return transformers.SiglipVisionConfig(**{**base, **kw})


def dual_encoder_config(kind: str, text=None, vision=None, **kw):
  """A tiny `CLIPConfig` / `SiglipConfig`: hidden 32, 2 layers, 32x32 images of 8x8 patches;
  `text`, `vision` override the towers' settings."""
  tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
  text = {**tower, "vocab_size": 99, "max_position_embeddings": 16, **(text or {})}
  vision = {**tower, "image_size": 32, "patch_size": 8, **(vision or {})}
  cls = transformers.CLIPConfig if kind == "clip" else transformers.SiglipConfig
  return cls(text_config=text, vision_config=vision, **kw)


TEXT_CONFIGS = {
    "llama": transformers.LlamaConfig,
    "mistral": transformers.MistralConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
    "persimmon": transformers.PersimmonConfig,
}


def text_config(model_type: str = "llama", **kw):
  base = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
              tie_word_embeddings=False)
  if model_type == "qwen3":
    base["head_dim"] = 16
  if model_type == "persimmon":  # one head count: no key/value heads of its own
    del base["num_key_value_heads"]
  return TEXT_CONFIGS[model_type](**{**base, **kw})


def save(model: torch.nn.Module, path: str, seed: int = 0, **save_kw) -> str:
  add_noise(model, seed)
  model.eval()
  model.save_pretrained(path, **save_kw)
  return path


def llava_config(vision=None, text=None, **kw):
  vision = vision or clip_vision_config()
  text = text or text_config()
  kw.setdefault("image_token_id", text.vocab_size - 1)
  return transformers.LlavaConfig(vision_config=vision, text_config=text, **kw)


def left_padded(rows, pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Token rows of different lengths -> `input_ids [B, T]` and `attention_mask [B, T]`, padded on
  the left as transformers' processors do for generation."""
  t = max(len(r) for r in rows)
  ids = np.full((len(rows), t), pad, np.int64)
  mask = np.zeros_like(ids)
  for i, row in enumerate(rows):
    ids[i, t - len(row):] = row
    mask[i, t - len(row):] = 1
  return ids, mask


def torch_inputs(inputs: dict) -> dict:
  return {k: torch.tensor(v) for k, v in inputs.items()}


def reference_logits(model, inputs: dict) -> np.ndarray:
  """transformers' float32 logits on processor arrays, positions from the attention mask as
  its `generate` computes them for left-padded rows."""
  mask = inputs["attention_mask"]
  positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
  with torch.no_grad():
    return model(**torch_inputs(inputs), position_ids=torch.tensor(positions)).logits.numpy()


def cli_logits(ckpt: str, inputs: dict, workdir) -> np.ndarray:
  """`mmjax logits` on processor arrays (files under `workdir`): float32 `[B, T, V]`."""
  from mmjax import cli

  arrays, out = os.path.join(workdir, "inputs.npz"), os.path.join(workdir, "logits.npy")
  np.savez(arrays, **inputs)
  assert cli.main(["logits", "--checkpoint", ckpt, "--inputs", arrays, "--out", out]) == 0
  logits = np.load(out)
  assert logits.dtype == np.float32 and logits.shape[:2] == inputs["input_ids"].shape
  return logits


def max_diff(a, b, mask=None) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  diff = np.abs(a - b)
  if mask is not None:
    diff = diff[np.asarray(mask, bool)]
  return float(diff.max())


def assert_logits_match(name: str, ours, ref, mask) -> float:
  """Float32 logits within TOLERANCE of the reference over the real (`mask`) positions, with the
  same greedy tokens there; records and returns the max abs diff."""
  diff = max_diff(ours, ref, mask)
  record(name, diff)
  assert diff <= TOLERANCE, diff
  mask = np.asarray(mask) == 1
  np.testing.assert_array_equal(np.argmax(ours, -1)[mask], np.argmax(ref, -1)[mask])
  return diff


def record(name: str, value: float) -> None:
  """Appends a parity figure to $MMJAX_PARITY_LOG (for closing notes); no-op otherwise."""
  path = os.environ.get("MMJAX_PARITY_LOG")
  if path:
    with open(path, "a") as f:
      f.write(json.dumps({"test": name, "max_abs_diff": value}) + "\n")


def sentencepiece_tokenizer(corpus, vocab_size: int = 100):
  """A tiny SentencePiece-like tokenizer as Fuyu-8B's behaves: Unigram pieces over text with `▁`
  prepended and for spaces, `|SPEAKER|`, `|NEWLINE|` and `<0x04>` ordinary pieces (so a run of
  placeholders starts with a lone `▁`, which FuyuProcessor drops), `<s>` `</s>` special and `<s>`
  in front with special tokens on -> `PreTrainedTokenizerFast`."""
  import json

  import tokenizers
  from tokenizers import decoders, models, normalizers, processors, trainers

  normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
  trained = tokenizers.Tokenizer(models.Unigram())
  trained.normalizer = normalizer
  trained.train_from_iterator(corpus, trainer=trainers.UnigramTrainer(
      vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>",
      show_progress=False))
  vocab = [tuple(p) for p in json.loads(trained.to_str())["model"]["vocab"]]
  vocab += [(p, 0.0) for p in ("|SPEAKER|", "|NEWLINE|", "<0x04>", "▁")
            if p not in {v for v, _ in vocab}]
  tok = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=0))
  tok.normalizer = normalizer
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
  tok.add_special_tokens(["<unk>", "<s>", "</s>"])
  tok.post_processor = processors.TemplateProcessing(
      single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
  return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>",
                                              eos_token="</s>", unk_token="<unk>")


def converted_once(tmp_path_factory, prefix: str, hf_config_of, tiny, load_reference):
  """`get(name)`: (root, hf config, transformers model, (family, config, params)) of the config
  `hf_config_of(name)`, saved by `tiny(path, hf_config)`, converted by `mmjax convert` and loaded
  back, once per name (for a module-scoped fixture)."""
  from mmjax import cli  # pylint: disable=g-import-not-at-top
  from mmjax.checkpoint import load_checkpoint  # pylint: disable=g-import-not-at-top

  built = {}

  def get(name):
    if name not in built:
      root = tmp_path_factory.mktemp(prefix)
      hf_cfg = hf_config_of(name)
      hf_dir = tiny(str(root / "hf"), hf_cfg)
      assert cli.main(["convert", "--hf", hf_dir, "--out", str(root / "mm"), "--quiet"]) == 0
      built[name] = (root, hf_cfg, load_reference(hf_dir), load_checkpoint(str(root / "mm")))
    return built[name]

  return get

"""Tiny InternVL models, processor-like inputs, and the original-release fixture for tests.

The original InternVL release (`InternVLChatModel`, trust_remote_code) cannot be downloaded here,
so `write_original` re-keys a tiny transformers-native model's tensors into that layout: fused
`attn.qkv`, `ls1`/`ls2`, `mlp1.{0,1,3}`, and for InternLM2 a `wqkv` grouped per KV head. The
reference logits then come from the native model, which computes the same function.
"""

import json
import os

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

from hf_files import load_tensors
from hf_models import save, text_config

IMAGE = 120  # <IMG_CONTEXT> id in the tiny vocab of 128
IMG_START, IMG_END = 121, 122


def vision_config(**kw):
  """32-px tiles of 4-px patches: an 8x8 grid, 16 tokens per tile after the pixel shuffle."""
  base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=32, patch_size=4, attention_bias=True)
  return transformers.InternVLVisionConfig(**{**base, **kw})


def internvl_config(vision=None, text=None, **kw):
  text = text or text_config("qwen2")
  kw.setdefault("image_token_id", IMAGE)
  kw.setdefault("tie_word_embeddings", text.tie_word_embeddings)
  return transformers.InternVLConfig(vision_config=vision or vision_config(), text_config=text,
                                     **kw)


def tokens_per_tile(hf_cfg) -> int:
  v = hf_cfg.vision_config
  grid = v.image_size[0] // v.patch_size[0]
  return int(grid * hf_cfg.downsample_ratio) ** 2


def tiny(path: str, hf_cfg, seed: int = 0, dtype=torch.float32) -> str:
  torch.manual_seed(seed)  # the same model whatever ran before (HF init draws from the global RNG)
  return save(transformers.InternVLForConditionalGeneration(hf_cfg).to(dtype), path, seed=seed)


def make_inputs(hf_cfg, rows, seed: int = 0) -> dict[str, np.ndarray]:
  """Left-padded rows; each row lists its images' tile counts, each image `<img>ctx*n*tiles</img>`."""
  rng = np.random.default_rng(seed)
  n = tokens_per_tile(hf_cfg)
  seqs, tiles = [], 0
  for r, images in enumerate(rows):
    seq = [1] + list(rng.integers(3, 100, 2 + r))
    for count in images:
      seq += [IMG_START] + [IMAGE] * (n * count) + [IMG_END] + list(rng.integers(3, 100, 2))
      tiles += count
    seqs.append(seq)
  t = max(len(s) for s in seqs)
  ids = np.zeros((len(seqs), t), np.int64)
  mask = np.zeros_like(ids)
  for i, s in enumerate(seqs):
    ids[i, t - len(s):] = s
    mask[i, t - len(s):] = 1
  size = hf_cfg.vision_config.image_size[0]
  pixels = rng.normal(size=(tiles, 3, size, size)).astype(np.float32)
  return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def reference_logits(hf_dir: str, inputs: dict) -> np.ndarray:
  model = transformers.InternVLForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation="eager").eval()
  mask = inputs["attention_mask"]
  positions = np.where(mask == 0, 1, np.cumsum(mask, -1) - 1)
  pixels = inputs["pixel_values"]
  with torch.no_grad():
    return model(input_ids=torch.tensor(inputs["input_ids"]), attention_mask=torch.tensor(mask),
                 pixel_values=torch.tensor(pixels) if len(pixels) else None,
                 position_ids=torch.tensor(positions)).logits.numpy()


# --- the original release's layout --------------------------------------------------------------

_VIT_NAMES = (  # native (within a vision layer) -> original
    ("attention.projection_layer.", "attn.proj."), ("attention.q_norm.", "attn.q_norm."),
    ("attention.k_norm.", "attn.k_norm."), ("lambda_1", "ls1"), ("lambda_2", "ls2"),
    ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."), ("mlp.", "mlp."),
)
_INTERNLM2_NAMES = (  # native Llama (within a decoder layer) -> InternLM2
    ("self_attn.o_proj.", "attention.wo."), ("input_layernorm.", "attention_norm."),
    ("post_attention_layernorm.", "ffn_norm."), ("mlp.gate_proj.", "feed_forward.w1."),
    ("mlp.up_proj.", "feed_forward.w3."), ("mlp.down_proj.", "feed_forward.w2."),
)


def _rename(name: str, pairs) -> str:
  for old, new in pairs:
    if name.startswith(old):
      return new + name[len(old):]
  raise KeyError(name)


def original_tensors(native: dict, hf_cfg, decoder: str) -> dict:
  """Native `save_pretrained` tensors -> the original InternVL keys (`decoder`: 'internlm2' |
  'qwen2' | 'llama')."""
  text = hf_cfg.text_config
  heads, kv = text.num_attention_heads, text.num_key_value_heads
  head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
  groups = heads // kv
  out = {}
  for key, value in native.items():
    if key.startswith("vision_tower.encoder.layer."):
      i, rest = key[len("vision_tower.encoder.layer."):].split(".", 1)
      prefix = f"vision_model.encoder.layers.{i}."
      if rest.startswith(("attention.q_proj", "attention.k_proj", "attention.v_proj")):
        if rest.startswith("attention.q_proj"):
          suffix = rest.rsplit(".", 1)[1]
          parts = [native[f"vision_tower.encoder.layer.{i}.attention.{n}_proj.{suffix}"]
                   for n in "qkv"]
          out[f"{prefix}attn.qkv.{suffix}"] = torch.cat(parts, 0)
        continue
      out[prefix + _rename(rest, _VIT_NAMES)] = value
    elif key.startswith("vision_tower.embeddings."):
      name = {"cls_token": "class_embedding", "position_embeddings": "position_embedding",
              "patch_embeddings.projection.weight": "patch_embedding.weight",
              "patch_embeddings.projection.bias": "patch_embedding.bias"}[
                  key[len("vision_tower.embeddings."):]]
      out[f"vision_model.embeddings.{name}"] = value
    elif key.startswith("multi_modal_projector."):
      name = key[len("multi_modal_projector."):]
      layer = {"layer_norm": 0, "linear_1": 1, "linear_2": 3}[name.split(".")[0]]
      out[f"mlp1.{layer}.{name.split('.')[1]}"] = value
    elif decoder != "internlm2":
      out[key] = value  # language_model.model.* / language_model.lm_head.* as the release has them
    elif key.startswith("language_model.model.layers."):
      i, rest = key[len("language_model.model.layers."):].split(".", 1)
      prefix = f"language_model.model.layers.{i}."
      if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
        if rest.startswith("self_attn.q_proj"):
          suffix = rest.rsplit(".", 1)[1]
          get = lambda n: native[f"{prefix}self_attn.{n}_proj.{suffix}"]
          tail = get("q").shape[1:]  # (D,) for weights, () for biases
          q = get("q").reshape(kv, groups, head_dim, *tail)
          k = get("k").reshape(kv, 1, head_dim, *tail)
          v = get("v").reshape(kv, 1, head_dim, *tail)
          out[f"{prefix}attention.wqkv.{suffix}"] = torch.cat([q, k, v], 1).reshape(-1, *tail)
        continue
      out[prefix + _rename(rest, _INTERNLM2_NAMES)] = value
    else:
      out[{"language_model.model.embed_tokens.weight": "language_model.model.tok_embeddings.weight",
           "language_model.model.norm.weight": "language_model.model.norm.weight",
           "language_model.lm_head.weight": "language_model.output.weight"}[key]] = value
  return out


def original_config(hf_cfg, decoder: str) -> dict:
  v, t = hf_cfg.vision_config, hf_cfg.text_config
  vision = dict(
      architectures=["InternVisionModel"], model_type="intern_vit_6b", hidden_size=v.hidden_size,
      intermediate_size=v.intermediate_size, num_hidden_layers=v.num_hidden_layers,
      num_attention_heads=v.num_attention_heads, image_size=v.image_size[0],
      patch_size=v.patch_size[0], num_channels=3, qkv_bias=v.attention_bias,
      qk_normalization=v.use_qk_norm, norm_type=v.norm_type, layer_norm_eps=v.layer_norm_eps,
      hidden_act=v.hidden_act, initializer_factor=0.1, drop_path_rate=0.1, use_flash_attn=False)
  llm = dict(
      vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
      num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
      num_key_value_heads=t.num_key_value_heads, hidden_act=t.hidden_act,
      max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
      rope_theta=t.rope_parameters["rope_theta"], rope_scaling=None,
      tie_word_embeddings=t.tie_word_embeddings)
  if decoder == "internlm2":
    llm.update(architectures=["InternLM2ForCausalLM"], model_type="internlm2",
               bias=t.attention_bias)
  elif decoder == "qwen2":
    llm.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False)
  else:
    llm.update(architectures=["LlamaForCausalLM"], model_type="llama",
               attention_bias=t.attention_bias)
  return dict(
      architectures=["InternVLChatModel"], model_type="internvl_chat", vision_config=vision,
      llm_config=llm, downsample_ratio=hf_cfg.downsample_ratio,
      select_layer=hf_cfg.vision_feature_layer, ps_version="v2", template="internvl2_5",
      force_image_size=v.image_size[0], dynamic_image_size=True, use_thumbnail=True,
      max_dynamic_patch=12, min_dynamic_patch=1, use_backbone_lora=0, use_llm_lora=0)


def write_original(native_dir: str, out_dir: str, decoder: str) -> str:
  """Writes `native_dir`'s model in the original layout, with a tokenizer_config naming the
  image context token (the original config.json does not)."""
  hf_cfg = transformers.InternVLConfig.from_pretrained(native_dir)
  os.makedirs(out_dir, exist_ok=True)
  save_file(original_tensors(load_tensors(native_dir), hf_cfg, decoder),
            os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(original_config(hf_cfg, decoder), f, indent=2)
  tokens = {str(i): {"content": c, "special": True} for i, c in
            ((IMAGE, "<IMG_CONTEXT>"), (IMG_START, "<img>"), (IMG_END, "</img>"))}
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump({"added_tokens_decoder": tokens}, f, indent=2)
  return out_dir

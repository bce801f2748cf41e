"""Every family writes the transformers config of an mmjax config (what a trained model's export
carries) and reads it back to the same config, directly and through transformers' own parser."""

import os

import pytest
import transformers

from blip2_models import blip2_config
from hf_models import clip_vision_config, llava_config, text_config
from fuyu_models import fuyu_config
from idefics_models import idefics_config
from idefics2_models import idefics2_config
from internvl_models import internvl_config
from llava_next_models import llava_next_config
from llava_onevision_models import onevision_config
from mllama_models import mllama_config
from pixtral_models import mistral3_config, pixtral_config, pixtral_vision_config
from qwen_vl_models import qwen_vl_config
from t5_models import blip2_t5_config, t5_text_config

from mmjax.models.family import EXECUTION_KEYS
from mmjax.models.registry import family_for_hf
from mmjax.train.cli import load_config
from mmjax.train.model_config import build_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _from_training(path):
  return build_model_config(dict(load_config(path and os.path.join(ROOT, path)).model))


def _from_hf(hf_cfg):
  hf = hf_cfg.to_dict()
  family = family_for_hf(hf)
  return family, family.config_from_hf(hf)


CASES = {
    "default": lambda: _from_training(None),
    "tiny_qwen2_vl": lambda: _from_training("configs/tiny/qwen2_vl.py"),
    "tiny_internvl": lambda: _from_training("configs/tiny/internvl.py"),
    "tiny_mllama": lambda: _from_training("configs/tiny/mllama.py"),
    "llava_clip": lambda: _from_hf(llava_config(clip_vision_config(), text_config("llama"))),
    "llava_qwen2": lambda: _from_hf(llava_config(text=text_config("qwen2"))),
    "qwen2_vl": lambda: _from_hf(qwen_vl_config("qwen2_vl")),
    "qwen2_5_vl": lambda: _from_hf(qwen_vl_config("qwen2_5_vl", tied=True)),
    "qwen3_vl": lambda: _from_hf(qwen_vl_config("qwen3_vl")),
    "internvl": lambda: _from_hf(internvl_config()),
    "llava_next": lambda: _from_hf(llava_next_config(vision_feature_layer=[-1, 0])),
    "llava_onevision": lambda: _from_hf(onevision_config(
        clip_vision_config(), vision_feature_layer=[-1, 0],
        vision_feature_select_strategy="default", vision_aspect_ratio="anyres_max_4")),
    "mllama": lambda: _from_hf(mllama_config()),
    "fuyu_persimmon": lambda: _from_hf(fuyu_config(text_config(
        "persimmon", qk_layernorm=False, layer_norm_eps=1e-6, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=25000.0,
                             partial_rotary_factor=0.25)), patch_size=3)),
    "pixtral": lambda: _from_hf(pixtral_config(vision_feature_layer=[-1, 0],
                                               multimodal_projector_bias=True)),
    "mistral3": lambda: _from_hf(mistral3_config(
        pixtral_vision_config(rope_parameters={"rope_type": "axial", "rope_theta": 500.0}),
        text_config("mistral", rms_norm_eps=1e-5, tie_word_embeddings=True),
        spatial_merge_size=3)),
    "idefics": lambda: _from_hf(idefics_config(act="quick_gelu", tied=True)),
    "idefics_resampler": lambda: _from_hf(idefics_config(resampler=True, gate="vector",
                                                         qk_norm=True, perceiver_qk_norm=True,
                                                         interval=1, layers=3)),
    "idefics2": lambda: _from_hf(idefics2_config()),
    "blip2_opt": lambda: _from_hf(blip2_config(depth=3, freq=2)),
    "blip2_llama": lambda: _from_hf(blip2_config(text="llama", vision_act="quick_gelu")),
    "idefics2_tied_llama": lambda: _from_hf(idefics2_config(kv_heads=4, tied=True,
                                                            text_type="llama")),
    # transformers 5 parses every T5 config as tied (an untied head is read from the weights,
    # `mmjax.convert.tables.t5`): tied heads, scaled (original T5) or not (T5 v1.1) here.
    "t5_relu": lambda: _from_hf(transformers.T5Config(**t5_text_config(
        "relu", tie=True, num_decoder_layers=3, relative_attention_max_distance=20))),
    "t5_gated_unscaled": lambda: _from_hf(transformers.T5Config(**t5_text_config(
        tie=True, scale_decoder_outputs=False))),
    "blip2_t5": lambda: _from_hf(blip2_t5_config(depth=3, freq=2, tie=True)),
    "instructblip_t5": lambda: _from_hf(blip2_t5_config(instruct=True, tie=True,
                                                        feed_forward_proj="relu")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mmjax_config_to_hf_and_back(case):
  family, config = CASES[case]()
  execution = {k: getattr(family.decoder_config(config), k) for k in EXECUTION_KEYS}
  hf = family.hf_config(config)
  assert family_for_hf(hf) is family or family.name == "internvl_chat"
  assert family.config_from_hf(hf, **execution) == config
  parsed = transformers.AutoConfig.for_model(**hf).to_dict()  # as from_pretrained reads it
  assert family.config_from_hf(parsed, **execution) == config

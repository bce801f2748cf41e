"""DPO and MPO losses of the preference step against a direct computation from transformers'
log-probabilities (a tiny converted LLaVA as the policy, another as the reference), on packed
pair rows; and the vision tower runs once per pair row, not once per answer."""

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hf_models import clip_vision_config, llava_config, record, save, text_config
from mmjax.checkpoint import load_checkpoint
from mmjax.convert.importer import convert_hf
from mmjax.train.preference import PreferenceConfig
from mmjax.train.preference_step import answer_logprobs, make_preference_eval
from mmjax.train.state import PreferenceState

T, SLOTS = 64, 2  # pair-row length, image slots per pair row
# Pair rows of packed pairs: row 0 holds one pair, row 1 two (answer lengths differ).
LAYOUT = [[(3, 5)], [(2, 4), (6, 1)]]  # per pair: (chosen tokens, rejected tokens)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """(HF policy, HF reference, mmjax family, config, policy params, reference params)."""
  tmp = tmp_path_factory.mktemp("pref")
  hf_cfg = llava_config(clip_vision_config(), text_config("llama"))
  out = []
  for name, seed in (("policy", 1), ("reference", 2)):
    torch.manual_seed(seed)  # transformers' init draws from torch's global generator
    hf_dir = save(transformers.LlavaForConditionalGeneration(hf_cfg), str(tmp / name), seed=seed)
    convert_hf(hf_dir, str(tmp / f"{name}_mm"), progress=False)
    out.append((transformers.LlavaForConditionalGeneration.from_pretrained(
        hf_dir, attn_implementation="eager").eval(), load_checkpoint(str(tmp / f"{name}_mm"))))
  (hf_policy, (family, config, policy)), (hf_reference, (_, _, reference)) = out
  return hf_policy, hf_reference, family, config, policy, reference


def _pairs(config, seed=2):
  """Token sequences of each pair (prompt with an image, then each answer) and its image."""
  rng = np.random.default_rng(seed)
  n = config.tokens_per_image
  v = config.vision
  pairs = []
  for row in LAYOUT:
    for lengths in row:
      prompt = [1, *rng.integers(3, 120, 3), *[config.image_token_id] * n, *rng.integers(3, 120, 2)]
      answers = [[*rng.integers(3, 120, k), 2] for k in lengths]
      image = rng.normal(size=(v.image_size, v.image_size, v.num_channels)).astype(np.float32)
      pairs.append((prompt, answers, image))
  return pairs


def _batch(pairs, config):
  """The pair batch of `LAYOUT` (schema: `mmjax.data.pairs`)."""
  b = len(LAYOUT)
  batch = {k: np.zeros((b, 2, T), np.int32) for k in ("input_ids", "labels", "attention_mask",
                                                       "segment_ids", "positions")}
  batch["loss_mask"] = np.zeros((b, 2, T), np.float32)
  v = config.vision
  pixels = np.zeros((b * SLOTS, v.image_size, v.image_size, v.num_channels), np.float32)
  image_mask = np.zeros(b * SLOTS, bool)
  pairs = iter(pairs)
  for r, row in enumerate(LAYOUT):
    start = [0, 0]
    for k in range(len(row)):
      prompt, answers, image = next(pairs)
      pixels[r * SLOTS + k], image_mask[r * SLOTS + k] = image, True
      for a, answer in enumerate(answers):
        seq = np.asarray(prompt + answer)
        at = slice(start[a], start[a] + len(seq))
        batch["input_ids"][r, a, at] = seq
        batch["labels"][r, a, at] = np.append(seq[1:], 0)
        batch["loss_mask"][r, a, at] = np.arange(len(seq)) >= len(prompt) - 1
        batch["loss_mask"][r, a, start[a] + len(seq) - 1] = 0  # nothing after the last token
        batch["attention_mask"][r, a, at] = 1
        batch["segment_ids"][r, a, at] = k + 1
        batch["positions"][r, a, at] = np.arange(len(seq))
        start[a] += len(seq)
  return {**batch, "pixel_values": pixels, "image_mask": image_mask}


def _hf_answer_logps(model, pairs) -> np.ndarray:
  """`[pairs, 2]` float64: each answer's summed token log-probabilities, and `[pairs, 2]`
  answer token counts, from transformers' logits of each sequence alone."""
  logps, counts = [], []
  for prompt, answers, image in pairs:
    row, row_counts = [], []
    for answer in answers:
      ids = torch.tensor([prompt + answer])
      with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=torch.tensor(image.transpose(2, 0, 1)[None])
                       ).logits[0].double()
      token = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
      row.append(float(token[len(prompt) - 1:].sum()))
      row_counts.append(len(answer))
    logps.append(row)
    counts.append(row_counts)
  return np.asarray(logps), np.asarray(counts)


def _expected(config: PreferenceConfig, policy, reference, counts) -> dict:
  """The loss and metrics computed directly (numpy float64), as TRL 0.10 computes them."""
  log_sigmoid = lambda x: -np.logaddexp(0.0, -x)
  rewards = config.beta * (policy - reference)  # [P, 2]
  margin = rewards[:, 0] - rewards[:, 1]
  eps = config.label_smoothing
  dpo = -(1 - eps) * log_sigmoid(margin) - eps * log_sigmoid(-margin)
  delta = rewards.mean()  # BCO's running mean after its first batch: this batch's mean
  quality = -log_sigmoid(rewards[:, 0] - delta) - log_sigmoid(-(rewards[:, 1] - delta))
  generation = -policy[:, 0].sum() / counts[:, 0].sum()  # the chosen answers' token mean
  w = config.weights
  loss = w["preference"] * dpo.mean() + w["quality"] * quality.mean() + \
      w["generation"] * generation
  return {"loss": loss, "rewards/chosen": rewards[:, 0].mean(),
          "rewards/rejected": rewards[:, 1].mean(), "rewards/margin": margin.mean(),
          "rewards/accuracy": (margin > 0).mean(), "logps/chosen": policy[:, 0].mean()}


@pytest.mark.parametrize("objective,loss_chunk", [("dpo", 4), ("mpo", 0)])
def test_loss_matches_a_direct_computation_from_transformers(models, objective, loss_chunk):
  hf_policy, hf_reference, family, model_config, policy, reference = models
  config = PreferenceConfig(objective=objective, beta=0.5, label_smoothing=0.1)
  pairs = _pairs(model_config)
  policy_logps, counts = _hf_answer_logps(hf_policy, pairs)
  reference_logps, _ = _hf_answer_logps(hf_reference, pairs)
  want = _expected(config, policy_logps, reference_logps, counts)

  module = family.build(model_config)
  params = jax.tree.map(jnp.asarray, policy)
  state = PreferenceState(
      step=jnp.zeros((), jnp.int32), params=params, frozen={}, opt_state=(),
      rng=jax.random.PRNGKey(0), skipped=jnp.zeros((), jnp.int32),
      reference=jax.tree.map(jnp.asarray, reference), reward_mean=jnp.zeros(()),
      reward_batches=jnp.zeros(()))
  # The function the train step differentiates, without the gradient (compiles faster).
  evaluate = make_preference_eval(module, config, loss_chunk=loss_chunk)
  metrics = jax.jit(evaluate)(state, _batch(pairs, model_config))
  assert float(metrics["pairs"]) == 3
  for name, value in want.items():
    diff = abs(float(metrics[name]) - value)
    record(f"preference/{objective}/loss_chunk={loss_chunk}/{name}", diff)
    assert diff <= 1e-5, (name, float(metrics[name]), value)
  assert 0 < want["rewards/accuracy"] < 1  # the accuracy is not trivially right


def test_vision_tower_runs_once_per_pair_row(models):
  """In the traced forward, every patch-embedding product takes the batch's images once
  (`[images, patches, C, P, P]`), not once per answer."""
  _, _, family, model_config, policy, _ = models
  module = family.build(model_config)
  batch = _batch(_pairs(model_config), model_config)
  v = model_config.vision
  patch = (v.num_channels, v.patch_size, v.patch_size)
  jaxpr = jax.make_jaxpr(lambda p, b: answer_logprobs(module, p, b, None, None, 0))(policy, batch)
  shapes = [tuple(x.aval.shape) for eqn in _equations(jaxpr.jaxpr)
            if eqn.primitive.name == "dot_general" for x in eqn.invars
            if tuple(x.aval.shape[-3:]) == patch and x.aval.ndim > 4]  # (not the kernel)
  grid = (v.image_size // v.patch_size) ** 2
  assert shapes and all(s == (len(LAYOUT) * SLOTS, grid, *patch) for s in shapes), shapes


def _equations(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in it."""
  yield from jaxpr.eqns
  for sub in jax_core.subjaxprs(jaxpr):
    yield from _equations(sub)

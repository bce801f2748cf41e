"""Batched evaluation of a checkpoint: prompts through the checkpoint's chat template and image
preprocessing (`PromptBuilder`, as `mmjax generate` builds them), several questions per
`Generator` call (left padded), every answer scored and written as it comes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from mmjax.eval import metrics
from mmjax.eval.batching import collate, round_up, until_stop
from mmjax.eval.data import EvalItem, EvalSet

METRICS = ("vqa", "exact", "anls", "choice")
CHOICE_MODES = ("letter", "loglik")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  metric: str
  choice_mode: str = "letter"  # choice: generate a letter, or pick the likeliest option text
  batch_size: int = 8  # questions per generate call
  max_new_tokens: int = 16
  prompt: str = "{question}"  # the user message; {question} is replaced

  def __post_init__(self):
    if self.metric not in METRICS:
      raise ValueError(f"unknown metric {self.metric!r}; expected one of {METRICS}")
    if self.choice_mode not in CHOICE_MODES:
      raise ValueError(f"unknown choice mode {self.choice_mode!r}; expected one of "
                       f"{CHOICE_MODES}")
    if self.batch_size < 1 or self.max_new_tokens < 1:
      raise ValueError("batch_size and max_new_tokens must be >= 1")
    if "{question}" not in self.prompt:
      raise ValueError(f"the prompt template {self.prompt!r} has no {{question}}")


def score_answer(metric: str, prediction: str, item: EvalItem) -> float:
  if metric == "vqa":
    return metrics.vqa_accuracy(prediction, item.answers)
  if metric == "anls":
    return metrics.anls(prediction, item.answers)
  if metric == "exact":
    return metrics.exact_match(prediction, item.answers)
  raise ValueError(f"{metric!r} does not score generated text")


def _chunks(items: Iterable[EvalItem], size: int) -> Iterator[list[EvalItem]]:
  chunk = []
  for item in items:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


class Evaluator:
  """Holds the prompt builder, the generator and (for log-likelihood choice) the scorer."""

  def __init__(self, builder, generator, cfg: EvalConfig):
    from mmjax.generation import GenerateConfig

    self.builder, self.generator, self.cfg = builder, generator, cfg
    self.gen = GenerateConfig(cfg.max_new_tokens, stop_ids=tuple(builder.stop_ids),
                              pad_id=builder.pad_id)
    self._scorer = None

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str, cfg: EvalConfig) -> "Evaluator":
    from mmjax.checkpoint import load_checkpoint, read_metadata
    from mmjax.generation import Generator

    family, config, _ = read_metadata(ckpt_dir)
    builder = family.prompt_builder(ckpt_dir, config)  # fails early, before the weights
    family, config, params = load_checkpoint(ckpt_dir)
    return cls(builder, Generator(family, config, params), cfg)

  def _check(self, item: EvalItem) -> None:
    choice = self.cfg.metric == "choice"
    if choice and item.options is None:
      raise ValueError(f"question {item.id}: --metric choice needs 'options' and an 'answer'")
    if not choice and item.options is not None:
      raise ValueError(f"question {item.id} is multiple choice: use --metric choice")

  def prompt_text(self, item: EvalItem) -> str:
    text = self.cfg.prompt.replace("{question}", item.question)
    if self.cfg.metric == "choice" and self.cfg.choice_mode == "letter":
      text = metrics.choice_prompt(text, item.options)
    return text

  def generate(self, items: Sequence[EvalItem]) -> list[str]:
    """Greedy answers of a batch of questions (decoded up to the first stop token)."""
    prompts = [self.builder(self.prompt_text(item), item.images) for item in items]
    ids, mask, pixels = collate(prompts, self.builder.pad_id, rows=self.cfg.batch_size)
    out = self.generator(ids, mask, pixels, gen=self.gen)
    return [self.builder.tokenizer.decode(until_stop(row, self.gen.stop_ids),
                                          skip_special_tokens=True).strip()
            for row in out[:len(items)]]

  def option_logliks(self, items: Sequence[EvalItem]) -> list[list[float]]:
    """Summed log-probabilities of each option's tokens after each question's prompt."""
    from mmjax.eval.loglik import ContinuationScorer

    if self._scorer is None:
      self._scorer = ContinuationScorer(self.generator)
    prompts, conts = [], []
    for item in items:
      prompt = self.builder(self.prompt_text(item), item.images)
      for option in item.options:
        ids, _ = self.builder.tokenizer.encode(option, add_special_tokens=False)
        if not len(ids):
          raise ValueError(f"question {item.id}: option {option!r} has no tokens")
        prompts.append(prompt)
        conts.append(ids)
    rows = round_up(len(prompts), self.cfg.batch_size)
    ids, mask, pixels = collate(prompts, self.builder.pad_id, rows=rows)
    conts += [conts[-1]] * (rows - len(conts))
    cont = np.zeros((rows, round_up(max(map(len, conts)), 4)), np.int32)  # right padded
    cont_mask = np.zeros(cont.shape, np.float32)
    for r, c in enumerate(conts):
      cont[r, :len(c)], cont_mask[r, :len(c)] = c, 1
    scores = self._scorer(ids, mask, pixels, cont, cont_mask)
    out, k = [], 0
    for item in items:
      out.append([float(s) for s in scores[k:k + len(item.options)]])
      k += len(item.options)
    return out

  def evaluate_batch(self, items: Sequence[EvalItem]) -> list[dict[str, Any]]:
    """One prediction record per question: the answer, its score and what it was scored on."""
    for item in items:
      self._check(item)
    records = []
    if self.cfg.metric == "choice" and self.cfg.choice_mode == "loglik":
      for item, logliks in zip(items, self.option_logliks(items)):
        choice = int(np.argmax(logliks))
        records.append(dict(id=item.id, question=item.question, prediction=item.options[choice],
                            choice=metrics.LETTERS[choice], logliks=logliks,
                            answer=metrics.LETTERS[item.answer_index],
                            score=float(choice == item.answer_index)))
      return records
    for item, answer in zip(items, self.generate(items)):
      if self.cfg.metric == "choice":
        choice = metrics.parse_choice(answer, item.options)
        records.append(dict(id=item.id, question=item.question, prediction=answer,
                            choice=None if choice is None else metrics.LETTERS[choice],
                            answer=metrics.LETTERS[item.answer_index],
                            score=float(choice == item.answer_index)))
      else:
        records.append(dict(id=item.id, question=item.question, prediction=answer,
                            answers=item.answers,
                            score=score_answer(self.cfg.metric, answer, item)))
    return records


def run_eval(evaluator: Evaluator, data: EvalSet, out_path: str | None,
             progress: bool | None = None) -> dict[str, Any]:
  """Evaluates every question; writes each prediction (JSON lines) as its batch finishes, so an
  interrupted run keeps what it scored. Returns {metric, score, count, predictions}."""
  from tqdm import tqdm

  cfg = evaluator.cfg
  total, count = 0.0, 0
  out = None  # opened with the first answers: a set that fails to read leaves no file
  bar = tqdm(total=len(data), desc=f"eval {cfg.metric}", unit="q", dynamic_ncols=True,
             disable=None if progress is None else not progress, file=sys.stderr)
  try:
    for chunk in _chunks(data, cfg.batch_size):
      records = evaluator.evaluate_batch(chunk)
      if out is None and out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        out = open(out_path, "w")
      for record in records:
        total += record["score"]
        count += 1
        if out is not None:
          out.write(json.dumps(record, ensure_ascii=False) + "\n")
      if out is not None:
        out.flush()
      bar.update(len(chunk))
      bar.set_postfix(score=f"{total / count:.4f}")
  finally:
    bar.close()
    if out is not None:
      out.close()
  if not count:
    raise ValueError(f"{data.path}: no questions to evaluate")
  return {"metric": cfg.metric, "score": total / count, "count": count, "predictions": out_path}

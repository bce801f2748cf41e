"""`mmjax eval` end to end on a tiny converted LLaVA: batched, left-padded answers equal
transformers' one-at-a-time greedy answers, and the scores are the hand-computed ones for
references built around those answers."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hf_models import TOLERANCE
from mmjax import cli
from mmjax.checkpoint import load_checkpoint, read_metadata
from mmjax.eval import metrics
from mmjax.eval.data import EvalSet
from mmjax.eval.runner import EvalConfig, Evaluator, run_eval
from mmjax.generation import Generator
from mmjax.generation.prompt import PromptBuilder

N = 8  # max new tokens
QUESTIONS = [  # (question, image indices): prompts of different lengths, one text-only
    ("what shape is in the picture", [0]),
    ("which colour", [1]),
    ("how many dogs are there in the picture", [2]),
    ("the cat sat", []),
    ("which colour is the circle", [0]),
    ("a red square", [1]),
]
# VQA references: the transformers answer k times among ten, the other ten-k answers wrong.
# Hand-computed accuracies (leave-one-out, min(matches / 3, 1)): k=0 -> 0, 1 -> 0.3, 2 -> 0.6,
# 3 -> 0.9, 4 -> 1, 10 -> 1; mean = 3.8 / 6.
MATCHES = [0, 1, 2, 3, 4, 10]
EXPECTED_VQA = 3.8 / 6


@pytest.fixture(scope="module")
def reference(chat_llava):
  """transformers' greedy answer to each question, asked one at a time."""
  return [chat_llava.hf_answer(q, [chat_llava.images[i] for i in idx], N) for q, idx in QUESTIONS]


@pytest.fixture(scope="module")
def generator(chat_llava):
  family, config, params = load_checkpoint(chat_llava.ckpt)
  return Generator(family, config, params)


def _evaluator(chat_llava, generator, **kw):
  _, config, _ = read_metadata(chat_llava.ckpt)
  return Evaluator(PromptBuilder.from_checkpoint(chat_llava.ckpt, config), generator,
                   EvalConfig(**{"batch_size": 4, "max_new_tokens": N, **kw}))


def _write_jsonl(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_vqa_cli_equals_transformers_and_hand_computed_score(chat_llava, reference, tmp_path,
                                                             capsys):
  assert len(set(reference)) > 2 and all(reference)  # distinct, non-empty answers
  records = [{"question_id": 100 + i, "image": [chat_llava.images[j] for j in idx],
              "question": q, "answers": [reference[i]] * k + ["zzzz"] * (10 - k)}
             for i, ((q, idx), k) in enumerate(zip(QUESTIONS, MATCHES))]
  _write_jsonl(tmp_path / "vqa.jsonl", records)
  out = tmp_path / "preds.jsonl"
  assert cli.main(["eval", "--checkpoint", chat_llava.ckpt, "--data", str(tmp_path / "vqa.jsonl"),
                   "--metric", "vqa", "--out", str(out), "--batch-size", "4",
                   "--max-new-tokens", str(N)]) == 0
  printed = capsys.readouterr().out
  assert f"vqa: {EXPECTED_VQA:.4f} on 6 questions; predictions in {out}" in printed
  preds = _read_jsonl(out)
  assert [p["id"] for p in preds] == [str(100 + i) for i in range(6)]
  assert [p["prediction"] for p in preds] == reference
  assert [p["score"] for p in preds] == pytest.approx([0, 0.3, 0.6, 0.9, 1, 1])


def test_exact_and_anls_from_parquet_with_embedded_images(chat_llava, generator, reference,
                                                         tmp_path):
  def image_cell(idx):  # Hugging Face datasets' Image feature: {bytes, path}
    return [{"bytes": open(chat_llava.images[j], "rb").read(), "path": None} for j in idx]

  # exact: the right answer on even rows, a wrong one on odd rows -> 3 / 6.
  rows = [{"image": image_cell(idx), "question": q,
           "answers": [reference[i].upper() + "." if i % 2 == 0 else "zzzz"]}
          for i, (q, idx) in enumerate(QUESTIONS)]
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "exact.parquet")
  result = run_eval(_evaluator(chat_llava, generator, metric="exact"),
                    EvalSet(str(tmp_path / "exact.parquet")), str(tmp_path / "exact.jsonl"))
  assert result["score"] == pytest.approx(0.5)
  assert [p["prediction"] for p in _read_jsonl(tmp_path / "exact.jsonl")] == reference

  # anls: each reference is the answer with its last character replaced: normalised length L,
  # distance 1 -> similarity 1 - 1/L (0 when that is below 0.5).
  def one_off(text):
    text = " ".join(text.lower().split())
    return text[:-1] + "#"
  rows = [{"image": image_cell(idx), "question": q, "answer": one_off(reference[i])}
          for i, (q, idx) in enumerate(QUESTIONS)]
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "anls.parquet")
  result = run_eval(_evaluator(chat_llava, generator, metric="anls"),
                    EvalSet(str(tmp_path / "anls.parquet")), None)
  lengths = [len(" ".join(r.lower().split())) for r in reference]
  expected = np.mean([1 - 1 / n if 1 - 1 / n >= 0.5 else 0.0 for n in lengths])
  assert result["score"] == pytest.approx(expected)


OPTIONS = [["red", "a blue square", "cat"], ["two dogs", "three", "the circle is red"],
           ["sat", "what shape"]]


def test_choice_by_option_loglik_equals_transformers(chat_llava, generator, tmp_path):
  tok = chat_llava.processor.tokenizer
  hf = [[chat_llava.hf_loglik(QUESTIONS[i][0], [chat_llava.images[j] for j in QUESTIONS[i][1]],
                              tok.encode(o, add_special_tokens=False)) for o in options]
        for i, options in enumerate(OPTIONS)]
  best = [int(np.argmax(h)) for h in hf]
  # Right answer on the first question only -> 1 / 3.
  answers = [best[0], (best[1] + 1) % 3, metrics.LETTERS[(best[2] + 1) % 2]]
  records = [{"image": [chat_llava.images[j] for j in QUESTIONS[i][1]], "question": QUESTIONS[i][0],
              "options": o, "answer": a} for i, (o, a) in enumerate(zip(OPTIONS, answers))]
  _write_jsonl(tmp_path / "mc.jsonl", records)
  result = run_eval(_evaluator(chat_llava, generator, metric="choice", choice_mode="loglik",
                               batch_size=2),
                    EvalSet(str(tmp_path / "mc.jsonl")), str(tmp_path / "mc.preds.jsonl"))
  assert result["score"] == pytest.approx(1 / 3)
  preds = _read_jsonl(tmp_path / "mc.preds.jsonl")
  for pred, ref in zip(preds, hf):
    assert np.max(np.abs(np.asarray(pred["logliks"]) - ref)) <= TOLERANCE
  assert [p["choice"] for p in preds] == [metrics.LETTERS[b] for b in best]


def test_choice_by_letter_reads_the_generated_answer(chat_llava, generator, tmp_path):
  answers = ["A", "B", "A"]
  records = [{"image": [chat_llava.images[j] for j in QUESTIONS[i][1]], "question": QUESTIONS[i][0],
              "options": o, "answer": a} for i, (o, a) in enumerate(zip(OPTIONS, answers))]
  _write_jsonl(tmp_path / "mc.jsonl", records)
  result = run_eval(_evaluator(chat_llava, generator, metric="choice"),
                    EvalSet(str(tmp_path / "mc.jsonl")), str(tmp_path / "letter.jsonl"))
  preds = _read_jsonl(tmp_path / "letter.jsonl")
  texts = [chat_llava.hf_answer(metrics.choice_prompt(QUESTIONS[i][0], o),
                                [chat_llava.images[j] for j in QUESTIONS[i][1]], N)
           for i, o in enumerate(OPTIONS)]
  assert [p["prediction"] for p in preds] == texts
  picked = [metrics.parse_choice(t, o) for t, o in zip(texts, OPTIONS)]
  assert [p["choice"] for p in preds] == [None if c is None else metrics.LETTERS[c]
                                          for c in picked]
  assert result["score"] == pytest.approx(np.mean([c == metrics.LETTERS.index(a)
                                                   for c, a in zip(picked, answers)]))


def test_errors_name_the_record(chat_llava, tmp_path, capsys):
  _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answers": ["a"] * 10},
                                        {"image": "x.png", "answers": ["a"]}])
  assert cli.main(["eval", "--checkpoint", chat_llava.ckpt, "--data", str(tmp_path / "bad.jsonl"),
                   "--metric", "vqa", "--out", str(tmp_path / "o.jsonl")]) == 1
  assert "record 1 (id 1): no 'question' text" in capsys.readouterr().err
  _write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "options": ["x", "y"], "answer": "C"}])
  assert cli.main(["eval", "--checkpoint", chat_llava.ckpt, "--data", str(tmp_path / "mc.jsonl"),
                   "--metric", "choice", "--out", str(tmp_path / "o.jsonl")]) == 1
  assert "answer 'C' is neither an option's letter (AB)" in capsys.readouterr().err
  assert cli.main(["eval", "--checkpoint", chat_llava.ckpt, "--data", str(tmp_path / "none.json"),
                   "--metric", "vqa"]) == 1
  assert "none.json: no such evaluation file" in capsys.readouterr().err

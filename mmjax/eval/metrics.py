"""Answer scoring: VQAv2 accuracy, ANLS (DocVQA), exact match, multiple-choice letters.

VQAv2 (Antol et al. 2015; the official `vqaEval.py`): an answer is normalised (newlines and tabs
to spaces; punctuation removed, or replaced by a space when it joins two words; periods not
followed by a digit removed; lower case; number words "none", "zero".."ten" to digits; articles
"a", "an", "the" dropped; contractions missing an apostrophe restored, "dont" -> "don't"). Its
accuracy against the ten annotators is min(#matches / 3, 1) averaged over the ten subsets of nine
(leave one annotator out). The official script skips normalisation when all ten references agree;
here the prediction and the references are always normalised, which changes nothing on VQAv2's
references (already in normal form) but does not count "Yes" wrong against ten "yes".

ANLS (Biten et al. 2019, the DocVQA / ST-VQA metric): per question the best, over its references,
of 1 - NL(prediction, reference), NL the Levenshtein distance over the longer length, both strings
lower-cased with whitespace collapsed; a similarity below the threshold 0.5 counts 0 (as the
official scoring script does: a similarity of exactly 0.5 is kept).
"""

from __future__ import annotations

import re
import string
from typing import Sequence

# Contractions as VQAv2's table restores them. The table maps each spelling with exactly one
# apostrophe missing to the full one ("couldnt've" and "couldn'tve" -> "couldn't've", "twas" ->
# "'twas"); it is generated from this list by that rule. Spellings that are words of their own
# ("well", "its", "shell", "wed", "id", ...) are absent from the official table and from this list.
_CONTRACTIONS = (
    "ain't", "aren't", "can't", "could've", "couldn't", "couldn't've", "didn't", "doesn't",
    "don't", "hadn't", "hadn't've", "hasn't", "haven't", "he'd", "he'd've", "he's", "how'd",
    "how'll", "how's", "isn't", "it'd", "it'd've", "it'll", "ma'am", "mightn't", "mightn't've",
    "might've", "mustn't", "must've", "needn't", "not've", "o'clock", "oughtn't", "'ow's'at",
    "shan't", "she'd've", "should've", "shouldn't", "shouldn't've", "somebody'd've",
    "somebody'll", "somebody's", "someone'd", "someone'd've", "someone'll", "someone's",
    "something'd", "something'd've", "something'll", "that's", "there'd", "there'd've",
    "there're", "there's", "they'd", "they'd've", "they'll", "they're", "they've", "'twas",
    "wasn't", "we'd've", "we've", "weren't", "what'll", "what're", "what's", "what've", "when's",
    "where'd", "where's", "where've", "who'd", "who'd've", "who'll", "who's", "who've", "why'll",
    "why're", "why's", "won't", "would've", "wouldn't", "wouldn't've", "y'all", "y'all'll",
    "y'all'd've", "you'd", "you'd've", "you'll", "you're", "you've",
)


def _contraction_table() -> dict[str, str]:
  table = {}
  for full in _CONTRACTIONS:
    marks = [i for i, c in enumerate(full) if c == "'"]
    for drop in marks:
      table[full[:drop] + full[drop + 1:]] = full
  return table


CONTRACTIONS = _contraction_table()
NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
NUMBER_WORDS["none"] = "0"
ARTICLES = frozenset(("a", "an", "the"))
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def _vqa_punctuation(text: str) -> str:
  # A mark touching a space ("yes ,") or any number with a thousands comma in the answer: the
  # marks are deleted ("1,000" -> "1000"); otherwise they become a space ("black-white").
  delete_all = bool(_DIGIT_COMMA_DIGIT.search(text))
  out = text
  for mark in _PUNCTUATION:
    if delete_all or mark + " " in text or " " + mark in text:
      out = out.replace(mark, "")
    else:
      out = out.replace(mark, " ")
  return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def vqa_normalize(answer: str) -> str:
  """VQAv2's normal form of an answer (see the module docstring)."""
  text = _vqa_punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
  words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
  """min(#matching annotators / 3, 1), averaged over the leave-one-annotator-out subsets."""
  if len(answers) < 2:
    raise ValueError(f"VQA accuracy needs several annotators' answers (VQAv2 has 10), got "
                     f"{len(answers)}; use --metric exact for one reference answer")
  pred = vqa_normalize(prediction)
  refs = [vqa_normalize(a) for a in answers]
  matches = sum(r == pred for r in refs)
  # Leaving out a matching annotator leaves matches - 1, any other leaves matches.
  total = sum(min((matches - (r == pred)) / 3, 1.0) for r in refs)
  return total / len(refs)


def levenshtein(a: str, b: str) -> int:
  """Edit distance (insertions, deletions, substitutions). Hand-written: answers are short, and
  the two-row dynamic programme is a few lines against a compiled dependency."""
  if len(a) < len(b):
    a, b = b, a
  previous = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    current = [i]
    for j, cb in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
    previous = current
  return previous[-1]


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
  """Average normalised Levenshtein similarity of one question (DocVQA)."""
  if not answers:
    raise ValueError("ANLS needs at least one reference answer")
  norm = lambda s: " ".join(s.strip().lower().split())
  pred = norm(prediction)
  best = 0.0
  for answer in answers:
    ref = norm(answer)
    longest = max(len(ref), len(pred))
    similarity = 1.0 if longest == 0 else 1.0 - levenshtein(ref, pred) / longest
    best = max(best, similarity)
  return best if best >= threshold else 0.0


def normalize_exact(text: str) -> str:
  """Case, surrounding whitespace and quotes, inner runs of spaces, and final punctuation."""
  text = " ".join(text.strip().lower().split())
  return text.strip("\"'`").rstrip(".!?,;:").strip()


def exact_match(prediction: str, answers: Sequence[str]) -> float:
  """1.0 when the prediction equals any reference up to `normalize_exact`, else 0.0."""
  pred = normalize_exact(prediction)
  return float(any(pred == normalize_exact(a) for a in answers))


LETTERS = string.ascii_uppercase


def parse_choice(prediction: str, options: Sequence[str]) -> int | None:
  """The option a generated answer picks, or None.

  Tried in order: a leading letter ("B", "B.", "(B)", "B) red", "Answer: B"), the answer being one
  option's text, a lone letter of an option anywhere ("I think C"), an option's text appearing
  alone in the answer.
  """
  letters = LETTERS[:len(options)]
  text = prediction.strip()
  head = re.match(r"^(?:the\s+)?(?:answer|option)?\s*(?:is)?\s*[:\-]?\s*\(?([A-Z])\)?(?:[.):,\s]|$)",
                  text, re.IGNORECASE)
  if head and head.group(1) in letters:  # upper case only: "a red ball" is not option A
    return letters.index(head.group(1))
  normalized = normalize_exact(text)
  for i, option in enumerate(options):
    if normalized == normalize_exact(option):
      return i
  lone = {m for m in re.findall(r"\b([A-Z])\b", text) if m in letters}
  if len(lone) == 1:
    return letters.index(lone.pop())
  named = [i for i, option in enumerate(options)
           if normalize_exact(option) and re.search(
               rf"\b{re.escape(normalize_exact(option))}\b", normalized)]
  return named[0] if len(named) == 1 else None


def choice_prompt(question: str, options: Sequence[str]) -> str:
  """The question with lettered options and LLaVA-1.5's instruction for a letter answer."""
  lines = [question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
  return "\n".join(lines) + "\nAnswer with the option's letter from the given choices directly."


def mean(values) -> float:
  values = list(values)
  return sum(values) / len(values) if values else 0.0


__all__ = ["ARTICLES", "CONTRACTIONS", "LETTERS", "NUMBER_WORDS", "anls", "choice_prompt",
           "exact_match", "levenshtein", "mean", "normalize_exact", "parse_choice",
           "vqa_accuracy", "vqa_normalize"]

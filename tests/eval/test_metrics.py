"""Eval metrics against scores computed by hand (the arithmetic is in the comments)."""

import pytest

from mmjax.eval import metrics as m


@pytest.mark.parametrize("raw, normal", [
    ("Yes", "yes"),
    ("yes.", "yes"),                     # a period not before a digit goes
    ("Two", "2"),                        # number words to digits
    ("none", "0"),
    ("The red one", "red 1"),            # articles dropped
    ("an apple", "apple"),
    ("dont know", "don't know"),         # a contraction missing its apostrophe
    ("couldnt've", "couldn't've"),       # one of two apostrophes missing
    ("twas", "'twas"),
    ("well", "well"),                    # a word of its own is not a contraction
    ("3.5", "3.5"),                      # a decimal point stays
    ("1,000", "1000"),                   # a thousands comma: every mark deleted
    ("black-and-white", "black and white"),  # marks inside a word become spaces
    ("yes , sir", "yes sir"),            # a mark beside a space is deleted
    ("  left\nside\t", "left side"),
    ("(a) dog!", "dog"),
])
def test_vqa_normalize(raw, normal):
  assert m.vqa_normalize(raw) == normal


@pytest.mark.parametrize("matching, expected", [
    # k of 10 annotators match. Leaving out one of the k: min((k-1)/3, 1); one of the 10-k others:
    # min(k/3, 1). Averaged over the 10 subsets:
    (0, 0.0),
    (1, (1 * 0 + 9 * (1 / 3)) / 10),     # 0.3
    (2, (2 * (1 / 3) + 8 * (2 / 3)) / 10),  # 0.6
    (3, (3 * (2 / 3) + 7 * 1) / 10),     # 0.9
    (4, 1.0),                            # (4 * 1 + 6 * 1) / 10
    (10, 1.0),
])
def test_vqa_accuracy_ten_annotators(matching, expected):
  answers = ["two"] * matching + ["3"] * (10 - matching)
  assert m.vqa_accuracy("2", answers) == pytest.approx(expected)
  assert m.vqa_accuracy("Two.", answers) == pytest.approx(expected)  # normalised the same


def test_vqa_accuracy_known_figures():
  assert m.vqa_accuracy("1", ["2"] * 9 + ["1"]) == pytest.approx(0.3)
  # References that need normalising: "Yes" matches ten "yes" (official: unanimous refs unprocessed)
  assert m.vqa_accuracy("Yes", ["yes"] * 10) == 1.0
  # "dog", "Dog", "the dog" match "a dog"; "dogs" does not: 3 matches -> 0.9
  assert m.vqa_accuracy("a dog", ["dog", "Dog", "dogs", "the dog"] + ["cat"] * 6) == pytest.approx(0.9)
  with pytest.raises(ValueError, match="use --metric exact"):
    m.vqa_accuracy("x", ["x"])


@pytest.mark.parametrize("pred, answers, expected", [
    ("hello", ["hello"], 1.0),
    ("Hello ", ["hello"], 1.0),             # case and outer spaces ignored
    ("hallo", ["hello"], 0.8),              # 1 substitution / 5 -> 1 - 0.2
    ("helo", ["hello"], 0.8),               # 1 deletion / 5
    ("abcd", ["abef"], 0.5),                # 2 / 4 = 0.5: exactly the threshold, kept
    ("abc", ["xyz"], 0.0),                  # 3 / 3 -> similarity 0
    ("abcde", ["abxyz"], 0.0),              # 3 / 5 -> 0.4 < 0.5 -> 0
    ("kitten", ["sitting", "kitchen"], 1 - 2 / 7),  # sitting: 3 / 7; kitchen: 2 / 7 -> best
    ("new  york", ["New York"], 1.0),        # inner whitespace collapsed
    ("", ["a"], 0.0),
])
def test_anls(pred, answers, expected):
  assert m.anls(pred, answers) == pytest.approx(expected)


def test_levenshtein():
  assert m.levenshtein("kitten", "sitting") == 3
  assert m.levenshtein("", "abc") == 3
  assert m.levenshtein("flaw", "lawn") == 2


def test_exact_match():
  assert m.exact_match("Red.", ["red"]) == 1.0
  assert m.exact_match("  blue  ", ["red", "Blue"]) == 1.0
  assert m.exact_match("dark red", ["red"]) == 0.0


@pytest.mark.parametrize("pred, expected", [
    ("B", 1), ("B.", 1), ("(C)", 2), ("C) blue", 2), ("Answer: A", 0), ("The answer is D.", 3),
    ("blue", 2),            # an option's text
    ("I think it is C", 2),  # a lone letter
    ("a red ball", 0),      # option A's text, not the article "a"
    ("E", None),            # not an option
    ("green", None),
])
def test_parse_choice(pred, expected):
  assert m.parse_choice(pred, ["a red ball", "green grass and sky", "blue", "black"]) == expected


def test_choice_prompt():
  assert m.choice_prompt("What colour?", ["red", "blue"]) == (
      "What colour?\nA. red\nB. blue\nAnswer with the option's letter from the given choices "
      "directly.")

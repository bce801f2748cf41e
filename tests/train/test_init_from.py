"""`train.init_from` selections (`mmjax.train.init_from`): parsing, and the strict plan checked
from parameter metadata (nothing read), on the trees of a stage-1 and a stage-2 BLIP-2."""

import jax
import numpy as np
import pytest

from mmjax.train.init_from import InitSource, parse_sources, plan

STAGE1_SELECTION = "encoder,qformer=connector/qformer,-qformer/word_embed,-qformer/*/ffn_text"


def _a(*shape):
  return jax.ShapeDtypeStruct(shape, np.float32)


def _stage1():
  return {"encoder": {"w": _a(2, 3)},
          "qformer": {"query_tokens": _a(4, 8), "word_embed": {"embedding": _a(9, 8)},
                      "layers": {"ffn_query": {"k": _a(8, 8)}, "ffn_text": {"k": _a(8, 8)}}},
          "head": {"itm": _a(2, 8)}}


def _stage2():
  return {"encoder": {"w": _a(2, 3)}, "decoder": {"embed": _a(9, 8)},
          "connector": {"qformer": {"query_tokens": _a(4, 8),
                                    "layers": {"ffn_query": {"k": _a(8, 8)}}},
                        "projection": {"kernel": _a(8, 8)}}}


def test_the_string_list_and_dict_forms():
  assert parse_sources("") == [] and parse_sources("a,b") == [InitSource("a"), InitSource("b")]
  one, two = parse_sources(f"gs://bucket/s1:{STAGE1_SELECTION}; opt:decoder")
  assert one.path == "gs://bucket/s1" and two == InitSource("opt", ((("decoder",),) * 2,))
  assert one.take == ((("encoder",), ("encoder",)), (("qformer",), ("connector", "qformer")))
  assert one.drop == ("qformer/word_embed", "qformer/*/ffn_text") and not one.whole
  as_dict = parse_sources([{"path": "gs://bucket/s1", "take": {"encoder": "encoder",
                                                              "qformer": "connector/qformer"},
                            "drop": ["qformer/word_embed", "qformer/*/ffn_text"]}, "opt:decoder"])
  assert as_dict == [one, two]
  assert parse_sources(("gs://bucket/whole",)) == [InitSource("gs://bucket/whole")]
  with pytest.raises(ValueError, match="without names to take"):
    parse_sources("a:-qformer/word_embed")
  with pytest.raises(ValueError, match="'path' and optionally"):
    parse_sources([{"path": "a", "select": "x"}])


def test_a_selection_renames_drops_by_name_and_reports():
  p = plan(parse_sources(f"s1:{STAGE1_SELECTION};opt:decoder"),
           {"s1": _stage1(), "opt": {"decoder": {"embed": _a(9, 8)}}}, _stage2())
  assert [("/".join(t.src), "/".join(t.dst)) for t in p.transfers] == [
      ("encoder", "encoder"), ("qformer", "connector/qformer"), ("decoder", "decoder")]
  assert p.transfers[1].leaves == (("layers", "ffn_query", "k"), ("query_tokens",))
  assert p.fresh == ("connector/projection",)
  assert p.dropped == {"s1": ("qformer/layers/ffn_text", "qformer/word_embed")}
  report = p.report()
  assert "loaded ['connector/qformer (from qformer)', 'decoder', 'encoder']" in report
  assert "randomly initialised ['connector/projection']" in report
  assert "s1: dropped (no place in this model) ['qformer/layers/ffn_text', 'qformer/word_embed']" \
      in report


@pytest.mark.parametrize("selection, error", [
    # An extra leaf is never dropped silently: the error names it and the drop that would take it.
    ("qformer=connector/qformer,-qformer/word_embed", "drop the checkpoint's "
     "'qformer/layers/ffn_text/k' explicitly"),
    ("qformer=connector/qformer,-qformer/word_embed,-qformer/*/ffn_text,-qformer/nothing",
     "drop 'qformer/nothing' matches no parameter"),
    ("head=connector/qformer", "checkpoint None, model"),  # a missing leaf
    ("qformer=decoder", "is not part of this model|does not match"),
    ("vision", "has no 'vision'"),
    ("encoder=connector/qformer/nothing", "'connector/qformer/nothing' is not part"),
    ("encoder,encoder", "'encoder' is in s1 twice"),
    ("encoder=connector,qformer=connector/qformer", "overlap"),
])
def test_what_a_selection_may_not_do(selection, error):
  with pytest.raises(ValueError, match=error):
    plan(parse_sources(f"s1:{selection}"), {"s1": _stage1()}, _stage2())


def test_a_shape_mismatch_names_the_leaf():
  stage1 = _stage1()
  stage1["qformer"]["query_tokens"] = _a(5, 8)
  with pytest.raises(ValueError, match=r"'connector/qformer' does not match the model at "
                     r"\['query_tokens'\]: checkpoint \(5, 8\), model \(4, 8\)"):
    plan(parse_sources(f"s1:{STAGE1_SELECTION}"), {"s1": stage1}, _stage2())


def test_whole_checkpoints_as_before():
  with pytest.raises(ValueError, match="component 'qformer' is not part of this model"):
    plan(parse_sources("s1"), {"s1": _stage1()}, _stage2())
  p = plan(parse_sources("a,b"), {"a": {"encoder": {"w": _a(2, 3)}},
                                  "b": {"decoder": {"embed": _a(9, 8)}}}, _stage2())
  assert p.report() == "init_from: loaded ['decoder', 'encoder']; randomly initialised " \
      "['connector']"
  with pytest.raises(ValueError, match="component 'encoder' is in both a and b"):
    plan(parse_sources("a,b"), {"a": {"encoder": {"w": _a(2, 3)}},
                                "b": {"encoder": {"w": _a(2, 3)}}}, _stage2())

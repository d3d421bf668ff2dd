"""Tests of `ttscale.diffs.first_difference`."""

from ttscale.diffs import first_difference


def test_equal_trees_have_no_difference():
  assert first_difference({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2]}}) is None


def test_the_first_difference_follows_the_expected_order():
  expected = {"model": {"num_layers": 4, "embed_dim": 64}, "seed": 1}
  found = {"seed": 2, "model": {"num_layers": 2, "embed_dim": 32}}
  assert first_difference(expected, found) == "model.num_layers=2 in the workdir, 4 now"


def test_a_key_on_one_side_only_is_named():
  assert first_difference({"a": 1}, {"a": 1, "b": 2}) == "b (present in only one)"
  assert first_difference({"a": {"c": 1}}, {"a": {}}) == "a.c (present in only one)"

"""`resumable.map_parts`: finished parts read, missing ones run, other parts refused."""

from __future__ import annotations

import json
import os

import pytest

from ttscale import io_utils, resumable


def _parts(directory, count: int, offset: int = 0) -> list[resumable.Part]:
  """Parts that square their item; described by the item."""
  return [resumable.Part(resumable.part_path(directory, n), {"item": n + offset}, n + offset)
          for n in range(count)]


class _Counting:
  """`run` that squares a part's item and remembers which parts it ran."""

  def __init__(self):
    self.ran: list[int] = []

  def __call__(self, part: resumable.Part) -> dict:
    self.ran.append(part.item)
    return {"square": part.item ** 2, "pair": (part.item, -part.item)}


def test_a_killed_map_resumed_runs_only_the_missing_parts_and_equals_an_uninterrupted_one(
    tmp_path):
  whole = resumable.map_parts(_parts(tmp_path / "whole", 4), _Counting())
  # As if killed after two parts: only their files are there.
  for name in ("00000.json", "00001.json"):
    (tmp_path / "resumed").mkdir(exist_ok=True)
    (tmp_path / "resumed" / name).write_bytes((tmp_path / "whole" / name).read_bytes())
  before = {name: os.stat(tmp_path / "resumed" / name).st_mtime_ns
            for name in ("00000.json", "00001.json")}
  run = _Counting()
  resumed = resumable.map_parts(_parts(tmp_path / "resumed", 4), run)
  assert run.ran == [2, 3]
  assert resumed.resumed == [True, True, False, False] and resumed.num_resumed == 2
  assert resumed.results == whole.results
  assert [r["square"] for r in resumed.results] == [0, 1, 4, 9]
  for name, mtime in before.items():
    assert os.stat(tmp_path / "resumed" / name).st_mtime_ns == mtime, f"{name} rewritten"
  assert sorted(os.listdir(tmp_path / "resumed")) == sorted(os.listdir(tmp_path / "whole"))


def test_a_part_run_now_returns_what_a_resumed_run_reads(tmp_path):
  """Fails if a fresh result differs from its file (a tuple kept as a tuple,
  the description missing), so that resumed and uninterrupted runs would
  compute from different values."""
  fresh = resumable.map_parts(_parts(tmp_path, 1, offset=3), _Counting())
  assert fresh.results == [{"square": 9, "pair": [3, -3], "part": {"item": 3}}]
  assert fresh.results[0] == io_utils.read_json(tmp_path / "00000.json")
  again = resumable.map_parts(_parts(tmp_path, 1, offset=3), _Counting())
  assert again.results == fresh.results and again.resumed == [True]


def test_a_file_of_another_part_is_a_one_line_error_naming_it_and_what_to_delete(tmp_path):
  resumable.map_parts(_parts(tmp_path, 2), _Counting())
  with open(tmp_path / "00001.json", "rb") as f:
    saved = f.read()
  run = _Counting()
  with pytest.raises(ValueError) as error:
    resumable.map_parts(_parts(tmp_path, 2, offset=1), run, delete=str(tmp_path))
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(f"{tmp_path / '00000.json'}: written for another part")
  assert '{"item": 0} there, {"item": 1} now' in message
  assert message.endswith(f"delete {tmp_path}")
  assert run.ran == []  # refused before any part ran (the first part is the stale one)
  with open(tmp_path / "00001.json", "rb") as f:
    assert f.read() == saved


def test_a_file_without_a_description_is_refused_naming_the_file_by_default(tmp_path):
  path = resumable.part_path(tmp_path, 0)
  io_utils.write_json_atomic(path, {"square": 0})
  with pytest.raises(ValueError, match=r"00000\.json: written for another part \(part null "
                     r"there, .*delete .*00000\.json$"):
    resumable.map_parts(_parts(tmp_path, 1), _Counting())


def test_a_leftover_temporary_file_of_a_killed_write_is_ignored(tmp_path):
  """A write killed before its rename leaves `.tmp-*` beside the target:
  the part is run again, and the temporary file is neither read nor taken
  for a part."""
  (tmp_path / ".tmp-abc123").write_text('{"square": 99, "part": {"item": 0}}')
  (tmp_path / "00000.json.tmp").write_text("{not json")
  run = _Counting()
  mapped = resumable.map_parts(_parts(tmp_path, 1), run)
  assert run.ran == [0] and mapped.num_resumed == 0
  assert mapped.results[0]["square"] == 0
  assert json.loads((tmp_path / "00000.json").read_text())["square"] == 0


def test_a_write_killed_mid_map_keeps_the_parts_before_it(tmp_path, monkeypatch):
  write = io_utils.write_json_atomic

  def killed_at_the_second_write(path, value):
    if path.endswith("00001.json"):
      raise KeyboardInterrupt
    write(path, value)

  monkeypatch.setattr(io_utils, "write_json_atomic", killed_at_the_second_write)
  with pytest.raises(KeyboardInterrupt):
    resumable.map_parts(_parts(tmp_path, 3), _Counting())
  assert sorted(os.listdir(tmp_path)) == ["00000.json"]


def test_a_result_not_reusable_is_run_again_and_replaced(tmp_path):
  """A stored result of the same part that lacks what is needed now (here:
  a field) is run again; one that has it is read."""
  resumable.map_parts(_parts(tmp_path, 2), lambda part: {"square": part.item ** 2})
  run = _Counting()
  mapped = resumable.map_parts(_parts(tmp_path, 2), run,
                               reusable=lambda part, stored: "pair" in stored)
  assert run.ran == [0, 1] and mapped.num_resumed == 0
  again = resumable.map_parts(_parts(tmp_path, 2), _Counting(),
                              reusable=lambda part, stored: "pair" in stored)
  assert again.num_resumed == 2 and again.results == mapped.results


def test_on_part_sees_every_part_in_order_as_it_finishes(tmp_path):
  resumable.map_parts(_parts(tmp_path, 1), _Counting())
  seen = []
  run = _Counting()

  def on_part(index, result, resumed):
    # Called before the next part runs: work on a result survives a kill.
    seen.append((index, result["square"], resumed, list(run.ran)))

  resumable.map_parts(_parts(tmp_path, 3), run, on_part=on_part)
  assert seen == [(0, 0, True, []), (1, 1, False, [1]), (2, 4, False, [1, 2])]


def test_a_result_holding_the_description_field_is_refused(tmp_path):
  with pytest.raises(ValueError, match="has a field 'part'"):
    resumable.map_parts(_parts(tmp_path, 1), lambda part: {"part": 1})
  assert not os.listdir(tmp_path)


def test_digest_ignores_key_order_and_tells_values_apart():
  assert resumable.digest({"a": 1, "b": [2]}) == resumable.digest({"b": [2], "a": 1})
  assert resumable.digest(["1+2", "3+4"]) != resumable.digest(["3+4", "1+2"])

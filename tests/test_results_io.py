"""Unit tests of medbundle.io.results: appending, torn lines, resuming, per-rank parts and the merge."""

from __future__ import annotations

import csv

import pytest

from medbundle.io.results import (
    SKIPPED_TABLE,
    ResultTables,
    TableAppender,
    TableSpec,
    done_keys,
    part_path,
    read_rows,
    repair_tail,
    write_rows_atomic,
)

LEDGER = TableSpec("predictions.csv", ("file", "p"), 0)
MARKS = TableSpec("marks.csv", ("file", "x"), 0)


def _tables(folder) -> ResultTables:
    return ResultTables(folder, LEDGER, (MARKS,), SKIPPED_TABLE)


def _read(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_appender_writes_header_once_and_flushes_each_call(tmp_path):
    path = tmp_path / "t.csv"
    a = TableAppender(path, ("file", "p"))
    a.append([["a", "0.1"]])
    assert _read(path) == [["file", "p"], ["a", "0.1"]]  # on disk before close: flushed
    a.close()
    b = TableAppender(path, ("file", "p"))
    b.append([["b", "0.2"], ["c", "0.3"]])
    b.close()
    assert _read(path) == [["file", "p"], ["a", "0.1"], ["b", "0.2"], ["c", "0.3"]]


def test_torn_last_line_is_ignored_by_readers_and_cut_by_the_next_writer(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("file,p\na,0.1\nb,0.")  # a kill in the middle of b's row
    assert read_rows(path, ("file", "p")) == [["a", "0.1"]]
    assert done_keys(path) == ["a"]
    a = TableAppender(path, ("file", "p"))
    a.append([["b", "0.2"]])
    a.close()
    assert path.read_text() == "file,p\na,0.1\nb,0.2\n"
    path.write_text("fil")  # torn header: an empty table
    assert read_rows(path, ("file", "p")) == [] and repair_tail(path) == 3 and path.read_text() == ""


def test_other_header_is_refused_with_the_file_name(tmp_path):
    path = tmp_path / "predictions.csv"
    path.write_text("file,q\na,1\n")
    with pytest.raises(ValueError, match=r"predictions.csv: columns \['file', 'q'\] differ .*--overwrite True"):
        TableAppender(path, ("file", "p"))
    with pytest.raises(ValueError, match="predictions.csv"):
        read_rows(path, ("file", "p"))


def test_fields_with_commas_quotes_and_newlines_round_trip(tmp_path):
    path = tmp_path / "t.csv"
    rows = [["a,b", 'say "x"'], ["multi\nline", "ok"]]
    write_rows_atomic(path, ("file", "reason"), rows)
    assert read_rows(path, ("file", "reason")) == rows
    assert not list(tmp_path.glob(".*tmp*"))


def test_merge_orders_by_input_drops_orphans_and_removes_parts(tmp_path):
    t = _tables(tmp_path)
    order = ["a", "b", "c", "d", "e"]
    # an earlier single-process session: a done (2 marks), c's marks written but the kill came before its row
    (tmp_path / "predictions.csv").write_text("file,p\na,1\n")
    (tmp_path / "marks.csv").write_text("file,x\na,1\na,2\nc,9\n")
    # a two-rank session: rank 0 did d and failed on b, rank 1 did e (no marks) and c again
    r0, r1 = t.open(0, 2), t.open(1, 2)
    r0.commit(["d", "4"], {"marks.csv": [["d", "7"]]})
    r0.skip(["b", "unreadable"])
    r1.commit(["e", "5"])
    r1.commit(["c", "3"], {"marks.csv": [["c", "8"]]})
    r0.close()
    r1.close()
    assert part_path(tmp_path / "predictions.csv", 1).is_file()
    assert set(t.done_keys()) == {"a", "c", "d", "e"}
    counts = t.merge(order)
    assert counts == {"marks.csv": 4, "skipped.csv": 1, "predictions.csv": 4}
    assert _read(tmp_path / "predictions.csv") == [["file", "p"], ["a", "1"], ["c", "3"], ["d", "4"], ["e", "5"]]
    # c's orphan mark (9) from the killed session is gone; its mark of the finished attempt (8) stays
    assert _read(tmp_path / "marks.csv") == [["file", "x"], ["a", "1"], ["a", "2"], ["c", "8"], ["d", "7"]]
    assert _read(tmp_path / "skipped.csv") == [["file", "reason"], ["b", "unreadable"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marks.csv", "predictions.csv", "skipped.csv"]
    # merging again changes nothing
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    t.merge(order)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def test_single_process_appends_to_the_final_files_and_a_later_success_clears_a_skip(tmp_path):
    t = _tables(tmp_path)
    a = t.open(0, 1)
    a.skip(["b", "out of memory"])
    a.commit(["a", "1"], {"marks.csv": [["a", "5"]]})
    a.close()
    assert _read(tmp_path / "predictions.csv")[-1] == ["a", "1"]  # the final file grows during the run
    t.merge(["a", "b", "z"])
    a = t.open(0, 1)  # the re-run retries b, which works this time
    a.commit(["b", "2"])
    a.close()
    t.merge(["a", "b", "z"])
    assert t.read(LEDGER) == [["a", "1"], ["b", "2"]]
    assert t.read(SKIPPED_TABLE) == []
    # an item no longer in the input leaves the tables
    t.merge(["b"])
    assert t.read(LEDGER) == [["b", "2"]] and t.read(MARKS) == []


def test_latest_skip_reason_wins_and_headerless_ledger(tmp_path):
    uids = TableSpec("seriesuids.csv", None, 0)
    skipped = TableSpec("skipped.csv", ("file", "reason", "seriesuid"), 2)
    t = ResultTables(tmp_path, uids, (), skipped)
    a = t.open(0, 1)
    a.skip(["/x/1.mhd", "first", "1"])
    a.commit(["2"])
    a.close()
    a = t.open(0, 1)
    a.skip(["/x/1.mhd", "second", "1"])
    a.close()
    t.merge(["1", "2"])
    assert (tmp_path / "seriesuids.csv").read_text() == "2\n"
    assert t.read(skipped) == [["/x/1.mhd", "second", "1"]]
    assert done_keys(tmp_path / "seriesuids.csv", has_header=False) == ["2"]


def test_merge_without_order_keeps_first_seen_and_dedupes_padded_items(tmp_path):
    t = ResultTables(tmp_path, LEDGER, (MARKS,), None)
    r0, r1 = t.open(0, 2), t.open(1, 2)
    r0.commit(["x", "1"], {"marks.csv": [["x", "a"]]})
    r1.commit(["y", "2"])
    r1.commit(["x", "1"], {"marks.csv": [["x", "a"]]})  # a DistributedSampler's padding repeats x on rank 1
    r0.close()
    r1.close()
    t.merge()
    assert t.read(LEDGER) == [["x", "1"], ["y", "2"]] and t.read(MARKS) == [["x", "a"]]


def test_remove_deletes_finals_and_parts(tmp_path):
    t = _tables(tmp_path)
    for rank in (0, 1):
        a = t.open(rank, 2)
        a.commit([f"k{rank}", "1"])
        a.close()
    (tmp_path / "keep.txt").write_text("not a table")
    t.remove()
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

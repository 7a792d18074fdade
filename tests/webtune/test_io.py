"""Atomic outputs, the byte-decoding policy, and Parquet inputs refused with an error naming the file."""

import os
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from webtune import errors, io
from webtune.errors import InputError

# --- atomic_dir ------------------------------------------------------------------------------------


def test_atomic_dir_replaces_the_folder_only_on_success(tmp_path):
    out = tmp_path / "base"
    with io.atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), io.atomic_dir(out) as tmp:
        (tmp / "a").write_text("half-written")
        raise RuntimeError("killed")
    assert (out / "a").read_text() == "1"
    with io.atomic_dir(out) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no temp folders left behind


def test_atomic_dir_creates_missing_parents_and_a_folder_as_readable_as_any_other(tmp_path):
    out = tmp_path / "models" / "base" / "tokenizer"
    with io.atomic_dir(out) as tmp:
        assert tmp.parent == out.parent  # same filesystem, so the rename is atomic
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


# --- atomic_path -----------------------------------------------------------------------------------


def test_atomic_path_renames_onto_the_path_only_on_success(tmp_path):
    out = tmp_path / "metrics" / "m.json"  # the parent is created: DVC does not create it
    with io.atomic_path(out) as tmp:
        assert tmp.parent == out.parent and not out.exists()
        tmp.write_text("1")
    assert out.read_text() == "1"
    with pytest.raises(RuntimeError), io.atomic_path(out) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("killed")
    assert out.read_text() == "1"
    assert [p.name for p in out.parent.iterdir()] == ["m.json"]  # no temp file left behind


def test_atomic_path_leaves_no_file_when_the_first_write_fails(tmp_path):
    out = tmp_path / "m.json"
    with pytest.raises(RuntimeError), io.atomic_path(out) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_outputs_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    out = tmp_path / "m.txt"
    io.write_text("x", out)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_write_json_is_sorted_and_keeps_unicode(tmp_path):
    out = tmp_path / "m.json"
    io.write_json({"b": 1, "a": "ünï"}, out)
    assert out.read_text() == '{\n  "a": "ünï",\n  "b": 1\n}\n'


def test_text_writer_appears_only_when_complete(tmp_path):
    out = tmp_path / "r.md"
    with io.text_writer(out) as f:
        f.write("# one\n")
        assert not out.exists()
        f.write("two\n")
    assert out.read_text() == "# one\ntwo\n"


# --- decode_bytes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text", "n_bad"),
    [
        # two invalid bytes replaced, two NULs removed, each counted
        ("caf\xe9 cr\xe8me".encode("latin-1") + b"\x00\x00 ok", "caf\ufffd cr\ufffdme ok", 4),
        (b"\xef\xbb\xbfhello", "hello", 0),  # a UTF-8 BOM is dropped, not counted
        (b"tab\tnewline\ncr\r\n", "tab\tnewline\ncr\r\n", 0),  # the whitespace controls stay
        (b"bell\x07 esc\x1b del\x7f", "bell esc del", 3),
        ("ünïcode 🐍".encode(), "ünïcode 🐍", 0),
        (b"", "", 0),
    ],
)
def test_decode_bytes_policy(raw, text, n_bad):
    assert io.decode_bytes(raw) == (text, n_bad)


# --- Parquet inputs --------------------------------------------------------------------------------


def test_parquet_file_opens_a_file_with_the_columns(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"pair_id": ["a", "b"], "text": ["x", "y"]}), path)
    parquet = io.parquet_file(path, ["pair_id"], "the clean stage")
    assert parquet.read(columns=["pair_id"]).column("pair_id").to_pylist() == ["a", "b"]


def test_parquet_file_refuses_a_file_that_is_not_parquet_naming_it(tmp_path):
    path = tmp_path / "pairs.parquet"
    path.write_text("pair_id,text\na,x\n")
    with pytest.raises(InputError) as err:
        io.parquet_file(path, ["pair_id"], "the clean stage")
    assert str(err.value).startswith(f"{path}: not a Parquet file (")


def test_parquet_file_refuses_a_file_missing_a_column_naming_it_and_its_writer(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"pair_id": ["a"]}), path)
    with pytest.raises(InputError) as err:
        io.parquet_file(path, ["pair_id", "instruction", "response"], "the clean stage")
    assert str(err.value) == (
        f"{path}: missing columns instruction, response (was it written by the clean stage?)")


def test_read_chat_rows_reads_ids_and_messages_and_refuses_other_tables(tmp_path):
    path = tmp_path / "train.parquet"
    messages = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    pq.write_table(pa.table({"pair_id": ["p1"], "messages": messages, "text": ["t"]}), path)
    assert io.read_chat_rows(path) == (["p1"], messages)

    pq.write_table(pa.table({"pair_id": ["p1"], "text": ["t"]}), path)
    with pytest.raises(InputError, match=r"missing columns messages \(was it written by the format stage\?"):
        io.read_chat_rows(path)


def test_a_missing_input_is_reported_in_one_line_naming_the_file(tmp_path, capsys):
    absent = tmp_path / "absent.parquet"
    with pytest.raises(FileNotFoundError) as err:
        io.parquet_file(absent, ["pair_id"], "the clean stage")
    assert err.value.filename == str(absent)  # what errors.reported names
    with pytest.raises(SystemExit) as exit_, errors.reported("validate"):
        io.parquet_file(absent, ["pair_id"], "the clean stage")
    assert exit_.value.code == 1
    line = f"validate: {absent}: no such file (did the stage that writes it run?)\n"
    assert capsys.readouterr().err == line

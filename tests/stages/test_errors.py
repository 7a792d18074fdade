"""One error path for every stage: bad input or bad config exits 1 with exactly one stderr line,
`<stage>: <message>`, naming the key, file or record to fix; never a traceback."""

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages import base, clean, evaluate, scrape, train, validate
from stages import format as format_stage
from stages.format import format_pairs
from tests.stages.test_format import doc, pair, write_pairs
from webtune.formats import harmony
from webtune.params import load_section
from webtune.schema import CHAT_ROWS, CLEAN_DOCS, PAIRS

REPO = Path(__file__).resolve().parents[2]


def write_params(tmp_path, section: str, **changes) -> Path:
    """The repo's params.yaml with `changes` to one section, written under tmp_path."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params[section] |= changes
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def fails_with(capsys, main, argv, expected: str) -> None:
    """main(argv) exits 1 and stderr is exactly `expected` on one line."""
    capsys.readouterr()  # drop anything a fixture printed (the toy base's progress)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == expected + "\n"


def chat_rows(tok, n: int) -> pa.Table:
    params = load_section("format", REPO / "params.yaml")
    rows, _ = format_pairs([pair(i) for i in range(n)], tok, harmony.FORMAT, params)
    return pa.Table.from_pylist(rows, schema=CHAT_ROWS)


# --- scrape --------------------------------------------------------------------------------------


def test_scrape_names_the_file_and_line_of_malformed_json(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.md").write_text("# Good\n\ntext")
    (src / "bad.json").write_text('[\n {"title": oops}\n]')
    params = write_params(tmp_path, "scrape", source="files")
    argv = ["--sources-dir", str(src), "--out", str(tmp_path / "raw.parquet"),
            "--metrics", str(tmp_path / "m.json"), "--params", str(params)]
    fails_with(capsys, scrape.main, argv,
               f"scrape: {src / 'bad.json'}:2: malformed JSON: Expecting value (column 12)")
    assert not (tmp_path / "raw.parquet").exists()


def test_scrape_run_as_a_module_with_an_unknown_source_prints_one_line(tmp_path):
    params = write_params(tmp_path, "scrape", source="ftp")
    argv = ["--sources-dir", str(tmp_path), "--out", str(tmp_path / "raw.parquet"), "--metrics",
            str(tmp_path / "m.json"), "--params", str(params)]
    proc = subprocess.run([sys.executable, "-m", "stages.scrape", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr == ("scrape: scrape.source: 'ftp' is not one of pydoc, files, http, "
                           "brightdata_unlocker, brightdata_dataset\n")
    assert not (tmp_path / "raw.parquet").exists()


# --- clean ---------------------------------------------------------------------------------------


def test_clean_refuses_a_raw_shard_that_is_not_parquet(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    shard = tmp_path / "raw" / "00000.parquet"
    shard.write_text("doc_id,body\na,text\n")
    argv = ["--raw", str(tmp_path / "raw"), "--docs", str(tmp_path / "docs"),
            "--dropped", str(tmp_path / "dropped"), "--pairs", str(tmp_path / "pairs"),
            "--scratch", str(tmp_path / "scratch"), "--metrics", str(tmp_path / "m.json"),
            "--params", str(REPO / "params.yaml")]
    fails_with(capsys, clean.main, argv,
               f"clean: {shard}: not a Parquet file (Parquet magic bytes not found in footer. Either the "
               "file is corrupted or this is not a parquet file.)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


# --- validate ------------------------------------------------------------------------------------


def test_validate_names_the_columns_a_pairs_shard_lacks(tmp_path, capsys):
    (tmp_path / "pairs").mkdir()
    pairs = tmp_path / "pairs" / "00000.parquet"
    pq.write_table(pa.table({"pair_id": ["p1"], "instruction": ["What is x?"]}), pairs)
    argv = ["--pairs", str(tmp_path / "pairs"), "--suite", str(REPO / "expectations/pairs.json"),
            "--out", str(tmp_path / "validated"), "--scratch", str(tmp_path / "scratch"),
            "--report", str(tmp_path / "report.md"), "--metrics", str(tmp_path / "m.json"),
            "--params", str(REPO / "params.yaml")]
    fails_with(capsys, validate.main, argv,
               f"validate: {pairs}: missing columns doc_id, source, url, fetched_at, content_sha256, task, "
               "system, response (was it written by the clean stage?)")
    assert not (tmp_path / "validated").exists()
    assert PAIRS.names == ["doc_id", "source", "url", "fetched_at", "content_sha256", "pair_id", "task",
                           "system", "instruction", "response"]


# --- base ----------------------------------------------------------------------------------------


def test_base_names_heads_that_do_not_divide_the_width(tmp_path, capsys):
    tiny = yaml.safe_load((REPO / "params.yaml").read_text())["base"]["tiny"] | {"num_heads": 3}
    argv = ["--out", str(tmp_path / "base"), "--metrics", str(tmp_path / "m.json"),
            "--params", str(write_params(tmp_path, "base", model="tiny-gpt-oss", tiny=tiny))]
    fails_with(capsys, base.main, argv,
               "base: base.tiny.hidden_size: 64 is not divisible by base.tiny.num_heads (3)")
    assert not (tmp_path / "base").exists()


# --- format --------------------------------------------------------------------------------------


def test_format_names_a_missing_tokenizer_folder(tmp_path, capsys):
    pairs = write_pairs(tmp_path / "pairs", [pair(1)])
    missing = tmp_path / "base" / "tokenizer"
    out = tmp_path / "format"
    argv = ["--pairs", str(pairs), "--docs", str(tmp_path / "docs"), "--tokenizer", str(missing),
            "--suite", str(REPO / "expectations/chat_rows.json"), "--out-dir", str(out),
            "--test-docs", str(out / "test_docs.parquet"),
            "--openai-dir", str(out / "openai"), "--dropped", str(out / "dropped.parquet"),
            "--scratch", str(tmp_path / "scratch"),
            "--report", str(tmp_path / "report.md"), "--metrics", str(tmp_path / "m.json"),
            "--lengths-plot", str(tmp_path / "lengths.csv"), "--params", str(REPO / "params.yaml")]
    fails_with(capsys, format_stage.main, argv,
               f"format: {missing}: no chat_format.json: not a tokenizer folder written by the base stage")
    assert not out.exists()


# --- train ---------------------------------------------------------------------------------------


def train_argv(tmp_path, tiny_base, params) -> list[str]:
    return ["--base", str(tiny_base), "--train", str(tmp_path / "train.parquet"),
            "--val", str(tmp_path / "val.parquet"),
            "--checkpoints", str(tmp_path / "checkpoints"), "--out", str(tmp_path / "adapter"),
            "--mask-report", str(tmp_path / "mask.md"), "--live-dir", str(tmp_path / "live"),
            "--metrics", str(tmp_path / "m.json"), "--params", str(params)]


def test_train_names_the_columns_a_val_split_lacks(tiny_base, tok, tmp_path, capsys):
    pq.write_table(chat_rows(tok, 4), tmp_path / "train.parquet")
    val = tmp_path / "val.parquet"
    pq.write_table(pa.table({"text": ["<|start|>user<|message|>hi<|end|>"]}), val)
    fails_with(capsys, train.main, train_argv(tmp_path, tiny_base, REPO / "params.yaml"),
               f"train: {val}: missing columns pair_id, messages (was it written by the format stage?)")
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "m.json").exists()


def test_train_names_an_unknown_backend(tiny_base, tok, tmp_path, capsys):
    for split in ("train", "val"):
        pq.write_table(chat_rows(tok, 2), tmp_path / f"{split}.parquet")
    params = write_params(tmp_path, "train", backend="jax")
    fails_with(capsys, train.main, train_argv(tmp_path, tiny_base, params),
               "train: train.backend: 'jax' is not one of hf, unsloth, openai, auto")
    assert not (tmp_path / "adapter").exists()


def test_train_with_unsloth_where_it_cannot_run_says_why_before_reading_anything(tmp_path, capsys):
    # No split files at all: the environment is checked first, so a CPU machine fails in a second.
    params = write_params(tmp_path, "train", backend="unsloth")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.main(train_argv(tmp_path, tmp_path / "no-base", params))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("train: train.backend unsloth: unsloth is not installed")
    assert err.endswith("install the GPU environment: pip install -e '.[gpu]' (README: GPU training)\n")


# --- evaluate ------------------------------------------------------------------------------------


def test_evaluate_refuses_an_adapter_folder_without_an_adapter(tiny_base, tok, tmp_path, capsys):
    test = tmp_path / "test.parquet"
    pq.write_table(chat_rows(tok, 2), test)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    test_docs = tmp_path / "test_docs.parquet"  # format's one file of test pages
    pq.write_table(pa.Table.from_pylist([doc(1)], schema=CLEAN_DOCS), test_docs)
    argv = ["--base", str(tiny_base), "--adapter", str(adapter), "--test", str(test),
            "--test-docs", str(test_docs),
            "--samples", str(tmp_path / "samples.jsonl"), "--samples-report", str(tmp_path / "samples.md"),
            "--compare-plot", str(tmp_path / "compare.csv"), "--metrics", str(tmp_path / "m.json"),
            "--params", str(REPO / "params.yaml")]
    fails_with(capsys, evaluate.main, argv,
               f"evaluate: {adapter} has no adapter_config.json: not a PEFT adapter folder (run train)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "test.parquet", "test_docs.parquet"]

"""webtune: the library under the DAG. `stages/` holds one thin module per dvc.yaml stage; everything a stage
or a user command uses lives here, each variant one module behind one small seam.

    schema.py        column names and Arrow schemas of every table; provenance and dropped-row builders
    params.py        params.yaml as frozen dataclasses, range-checked at load time
    errors.py        the one error path: `stage: message`, exit 1
    io.py            atomic files and folders, Parquet inputs, the byte-decoding policy
    parallel.py      order-preserving worker-process map
    expectations.py  the Great Expectations gate (validate, format)
    evaluation.py    evaluate's scores (chrF, stops, loops, lengths) and its side-by-side report
    sources/         where raw documents come from: pydoc (embedded default), files, http
    cleaning/        per-document cleaning steps, dedup, pairs
    formats/         chat formats: harmony (gpt-oss), chatml (SmolLM2, Qwen), llama3
    models/          bases (packaged SmolLM2, tiny from a config, hub at a commit), the chat model
    training/        supervision gate, run bookkeeping, model card, backends: hf (TRL)
    cli/             user commands: remote (S3 remote, all-or-nothing pull)
"""

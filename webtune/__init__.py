"""webtune: the library under the DAG. `stages/` holds one thin module per dvc.yaml stage; everything a stage
or a user command uses lives here, each variant one module behind one small seam.

    registry.py      names -> modules (params sections, sources, backends, bases, formats); imports nothing
    params.py        the params.yaml loader: knobs and their checks, variant sections, load_section
    schema.py        column names and Arrow schemas of every table; provenance and dropped-row builders
    errors.py        the one error path: `stage: message`, exit 1
    io.py            atomic files and folders, Parquet inputs, the byte-decoding policy
    shards.py        shard folders: the data half's tables as numbered Parquet files, a run of them per task
    sharded.py       how a sharded stage runs: datatrove passes over a fingerprinted scratch folder
    executors/       who runs a pass's tasks: local (default), slurm, ray (WEBTUNE_EXECUTOR)
    quiet.py         library warnings and progress bars kept out of logs a script reads
    secrets.py       API tokens from the environment or a git-ignored .env; redaction of messages
    splits.py        the format stage's knobs, its split by document and the leakage check (13-word shingles)
    chat_rows.py     pairs -> chat rows (messages, rendering, split, drops); format_passes (format's
                     datatrove passes); split_files (per-split tallies)
    expectations.py  the Great Expectations gate (validate, format): suites and run_suite;
                     expectations_batched (a table in batches), expectations_sharded (shards, as datatrove
                     passes), expectations_report (failure message, markdown report, check)
    evaluation/      evaluate's knobs, answer metrics, bootstrap intervals, the gate, the judge and the report
    sources/         where raw documents come from: the source contract and ScrapeParams (__init__), pydoc
                     (embedded default), files, http, brightdata_unlocker (Web Unlocker), brightdata_dataset
                     and brightdata_snapshot (Web Scraper API); brightdata_client (token, retries, 429
                     policy), pool (bounded concurrent fetches), ledger (what paid sources already
                     fetched), ratelimit (pacing, 429 fuse)
    cleaning/        CleanParams (__init__); text (per-document steps), pairs (doc_qa, product_copy); the
                     datatrove passes: steps (score, signatures), dedup (the cluster pass), passes (write)
    formats/         the ChatFormat seam (__init__); harmony (gpt-oss), chatml (SmolLM2, Qwen), llama3
    models/          BaseParams and loading a base, its tokenizer and format, an adapter (__init__); packaged
                     (the default SmolLM2), tiny (tiny-gpt-oss: recipe and model; tiny_tokenizer,
                     tiny_warmup, tiny_build), hub (a Hub id at a commit); chat (the Chat interface, Sampling,
                     Answer), inference (ChatModel), hosted (a chat-completions model behind the same
                     calls); packing (the packing probe)
    training/        TrainParams and the Backend seam (__init__); local (what hf and unsloth share: the
                     base, the mask gate, resume, the adapter folder); supervision (mask and gate), run
                     (fingerprint, lock, resume, data order), batching (token-budget micro-batches), card
                     (model card); backends hf (TRL; trainer, callback, device), unsloth, openai (hosted;
                     openai_api); distributed (DDP and FSDP processes)
    cli/             user commands: chat, serve (OpenAI-compatible API; serve_engine batches requests),
                     export (merged model), remote (S3 remote, all-or-nothing pull)
"""

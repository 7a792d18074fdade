"""The webtune DAG: one module per dvc.yaml stage, each a core function and a thin `main`.

scrape -> clean -> validate -> base -> format -> train -> evaluate. Everything a stage uses lives in the
`webtune` library beside this package; no stage imports another stage.
"""

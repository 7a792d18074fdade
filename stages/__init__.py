"""webtune pipeline stages: one module per dvc.yaml stage, plus the shared contract.

Shared contract: `schema` (tables), `params` (params.yaml as frozen dataclasses), `io` (atomic
writes), `chat_template` (the one place messages become text and tokens).
"""

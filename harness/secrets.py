"""Secrets never reach a file: the values of secret environment variables are redacted from what is written.

    scrub({"logger": {"key": "abc123..."}})   # -> {"logger": {"key": "<redacted:WANDB_API_KEY>"}}

A secret is the value of an environment variable whose name says so (`*KEY*`, `*TOKEN*`, `*SECRET*`,
`*PASSWORD*`, `*CREDENTIAL*`: WANDB_API_KEY, HF_TOKEN, ...), 8 characters or longer. results.json,
run.json, `.hydra/*.yaml` and what goes to W&B pass through `scrub`, so a config value that interpolates
one (`${oc.env:WANDB_API_KEY}`) is written as `<redacted:WANDB_API_KEY>`.
"""

from __future__ import annotations

import os
import re

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
MIN_LENGTH = 8  # shorter values ("1", "true") are settings, and redacting them would garble unrelated text


def secret_values() -> dict[str, str]:
    """{value: variable name} of the secret environment variables, longest value first."""
    found = {value: name for name, value in os.environ.items()
             if SECRET_NAME.search(name) and len(value) >= MIN_LENGTH}
    return dict(sorted(found.items(), key=lambda item: -len(item[0])))


def redact(text: str, secrets: dict[str, str] | None = None) -> str:
    """`text` with every secret value replaced by `<redacted:NAME>`."""
    for value, name in (secret_values() if secrets is None else secrets).items():
        text = text.replace(value, f"<redacted:{name}>")
    return text


def scrub(value, secrets: dict[str, str] | None = None):
    """A copy of a JSON-like value (dicts, lists, strings) with every secret redacted, keys included."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return value
    if isinstance(value, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets) for v in value]
    return redact(value, secrets) if isinstance(value, str) else value

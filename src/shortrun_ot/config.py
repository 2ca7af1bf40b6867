"""Configuration: params.yaml, its JSON schema, per-run settings and random streams."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import jsonschema
import torch
import yaml

from .io import load_json

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is missing, misspelt or out of range."""


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _key_path(error: jsonschema.ValidationError, prefix: str) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":  # name the misspelt key itself
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parts += extra[:1]
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        parts += missing[:1]
    return ".".join(([prefix] if prefix else []) + parts) or "<top level>"


def _check(instance: Any, schema: dict, prefix: str = "") -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        raise ConfigError(f"config key '{_key_path(error, prefix)}': {error.message}")


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in recursively (neither is modified)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _resolve(schema: dict, root: dict) -> dict:
    """``schema`` with a local ``$ref`` ("#/$defs/...") replaced by its target, siblings kept."""
    while "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _coerce(value: Any, schema: dict, root: dict) -> Any:
    schema = _resolve(schema, root)
    if isinstance(value, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {
            key: _coerce(item, properties.get(key, extra if isinstance(extra, dict) else {}), root)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_coerce(item, schema.get("items", {}), root) for item in value]
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, str) and "string" not in types:
        parsed = _parse_scalar(value)
        if _has_type(parsed, types):
            return parsed
    return value


def _parse_scalar(text: str) -> Any:
    """'4' -> 4, '1e-3' -> 0.001 (which YAML 1.1 leaves a string), 'true' -> True, 'null' -> None."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _has_type(value: Any, types: list[str]) -> bool:
    if isinstance(value, bool):
        return "boolean" in types
    if isinstance(value, int):
        return "integer" in types or "number" in types
    if isinstance(value, float):
        return "number" in types
    return value is None and "null" in types


def coerce_command_line_values(config: dict) -> dict:
    """``config`` with schema-typed scalars given as strings turned into their types.

    Snakemake's ``--config key='{a: 4}'`` parses nested values with YAML's BaseLoader, so every
    nested scalar arrives as a string ('4', 'true', 'null'); where the schema asks for a number,
    boolean or null, the string is read as YAML. Strings that do not parse to an allowed type are
    left for validation to reject.
    """
    schema = load_schema()
    return _coerce(config, schema, schema)


def validate_config(config: dict) -> None:
    """Check the whole workflow configuration; raise ConfigError naming the first bad key."""
    schema = load_schema()
    _check(config, schema)
    for key in ("evaluation", "anomaly"):
        for run in config[key]["runs"]:
            if run not in config["runs"]:
                raise ConfigError(f"config key '{key}.runs': {run!r} is not a key of 'runs' ({sorted(config['runs'])})")
    all_run_settings(config, schema)


def anomaly_run(model: str, digit: int, seed: int) -> str:
    """Run key of one anomaly-protocol run (Table 2)."""
    return f"{model}-holdout{digit}-seed{seed}"


def all_run_settings(config: dict, schema: dict | None = None) -> dict[str, dict]:
    """Settings of every run: the keys of ``runs`` and the anomaly runs derived from ``anomaly``."""
    schema = schema or load_schema()
    settings = {run: run_settings(config, run, schema) for run in config["runs"]}
    anomaly = config["anomaly"]
    for model in anomaly["runs"]:
        for digit in anomaly["digits"]:
            for seed in range(anomaly["seeds"]):
                merged = deep_merge(settings[model], {**anomaly["training"], "heldout_digit": digit, "seed": seed})
                key = anomaly_run(model, digit, seed)
                _check(merged, {"$defs": schema["$defs"], **schema["$defs"]["training"]}, prefix=f"anomaly ({key})")
                settings[key] = merged
    return settings


def _stage_schema(schema: dict) -> dict:
    """Schema of the per-iteration settings a stage reads: a training block without ``iterations``."""
    training = copy.deepcopy(schema["$defs"]["training"])
    training["required"].remove("iterations")
    del training["properties"]["iterations"]
    return {"$defs": schema["$defs"], **training}


def run_settings(config: dict, run: str, schema: dict | None = None) -> dict:
    """The training settings of ``run``: ``training`` deep-merged with ``runs[run]``, validated."""
    if run not in config["runs"]:
        raise ConfigError(f"unknown run {run!r}; the configuration defines {sorted(config['runs'])}")
    settings = deep_merge(config["training"], config["runs"][run] or {})
    schema = schema or load_schema()
    _check(settings, {"$defs": schema["$defs"], **schema["$defs"]["training"]}, prefix=f"runs.{run}")
    return settings


def stage_settings(settings: dict) -> dict:
    """The settings that change what one iteration computes (everything but ``iterations``)."""
    return {k: v for k, v in settings.items() if k != "iterations"}


def load_stage_settings(path: str | Path) -> dict:
    """Read and validate a run's ``config.json`` (written by the workflow's ``run_config`` rule)."""
    try:
        settings = load_json(path, "run configuration")
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    check_stage_settings(settings, str(path))
    return settings


def check_stage_settings(settings: dict, where: str) -> None:
    """Validate per-iteration settings; ``where`` prefixes the key named in the error."""
    _check(settings, _stage_schema(load_schema()), prefix=where)


def is_correction_iteration(settings: dict, t: int) -> bool:
    """Alg. 1, line 8: correct when t % L == 0; never when alpha == 0 (plain ABP)."""
    return settings["correction"]["alpha"] > 0 and t % settings["correction"]["every"] == 0


def dataset_id(settings: dict) -> str:
    """File stem of the prepared dataset a run trains on."""
    if settings["heldout_digit"] is None:
        return settings["dataset"]
    return f"{settings['dataset']}-holdout{settings['heldout_digit']}-seed{settings['seed']}"


def stage_rng(seed: int, iteration: int, stage: str) -> torch.Generator:
    """A CPU random stream derived from (seed, iteration, stage) alone.

    Resuming at any iteration reproduces the streams of an uninterrupted run, and two runs
    with the same seed share their streams (common random numbers for ablations).
    """
    digest = hashlib.sha256(f"{seed}/{iteration}/{stage}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def resolve_device(name: str) -> torch.device:
    """``auto`` means cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def set_tf32(enabled: bool) -> None:
    """TF32 matrix units for CUDA float32 matmuls and convolutions; off (the default) keeps IEEE float32."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled

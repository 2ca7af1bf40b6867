"""Configuration: params.yaml, its JSON schemas, the settings of every run, random streams.

A run's settings are ``training`` (the protocol every method shares) deep-merged with
``methods.<method>`` (that method's defaults) and ``runs.<key>``, with the paper's per-dataset
settings (``datasets.<dataset>``) in between (:func:`run_settings`); they are checked against
``$defs/training`` of ``workflow/schemas/config.schema.yaml`` plus the method's own schema
(``<method module>.schema.yaml``), with every key required and no other key allowed. Sweeps and
the anomaly protocol derive further runs from those.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib
from pathlib import Path
from typing import Any

import jsonschema
import torch
import yaml

from .data import DATASETS, UNLABELLED_DATASETS
from .io import load_json

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value is missing, misspelt or out of range."""


@functools.lru_cache(maxsize=None)
def _read_yaml(path: Path, modified: int) -> dict:
    """A YAML file's content, parsed once per version (``modified``: its mtime in ns): a Snakemake start-up
    validates hundreds of runs against the same schemas (parsing them each time cost it 4 s)."""
    with open(path) as f:
        return yaml.safe_load(f)


def _schema_file(path: Path) -> dict:
    """A copy of the parsed schema ``path`` (callers may change what they get)."""
    return copy.deepcopy(_read_yaml(path, path.stat().st_mtime_ns))


def load_schema() -> dict:
    return _schema_file(Path(SCHEMA_PATH))


# ---------------------------------------------------------------- methods and their schemas


def method_module(name: str):
    """The module of method ``name``: ``shortrun_ot.methods.<name>``, or a dotted path of your own."""
    module_name = name if "." in name else f"shortrun_ot.methods.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # the method's module exists but one of its imports does not
            raise
        from . import methods

        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(methods.available())} "
                          "or name a module of your own (a dotted path)") from None


def method_class(name: str):
    """The Method subclass of ``name`` (its module's ``METHOD``)."""
    module = method_module(name)
    if not hasattr(module, "METHOD"):
        raise ConfigError(f"method module {module.__name__} defines no METHOD (the Method subclass it provides)")
    return module.METHOD


def method_schema(name: str) -> dict:
    """The method's own settings schema: ``<module>.schema.yaml`` beside its module."""
    path = Path(method_module(name).__file__).with_suffix(".schema.yaml")
    if not path.is_file():
        raise ConfigError(f"method {name!r} has no settings schema {path}")
    return _schema_file(path)


def _complete(schema: dict) -> dict:
    """``schema`` with every declared property required, recursively (a run must set every key), except
    those that declare a ``default``: a run leaves them out to get the default, so that adding such a key
    to a method changes no existing run's settings (and reruns nothing)."""
    schema = copy.deepcopy(schema)
    if "properties" in schema:
        schema["required"] = sorted(key for key, sub in schema["properties"].items() if "default" not in sub)
        schema.setdefault("additionalProperties", False)
        for key, sub in schema["properties"].items():
            if sub.get("type") == "object":
                schema["properties"][key] = _complete(sub)
    return schema


def run_schema(method: str, complete: bool = True) -> dict:
    """Schema of a run of ``method``: the shared ``training`` keys, ``method`` and the method's keys."""
    root = load_schema()
    common = {key: _resolve(sub, root) for key, sub in root["$defs"]["training"]["properties"].items()}
    own = method_schema(method)
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {"method": {"const": method}, **common, **own.get("properties", {})},
    }
    return _complete(schema) if complete else schema


# ---------------------------------------------------------------- validation


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


def validate_config(config: dict) -> dict[str, dict]:
    """Check the whole workflow configuration; return the settings of every run.

    Raises ConfigError naming the first bad key: structure first (the top-level schema), then
    each method's defaults, each run, sweep and anomaly run, then the cross-references.
    """
    _check(config, load_schema())
    if config["compute"]["keep_states_every"] > 1 and config["compute"]["iterations_per_job"] == 1:
        raise ConfigError("config key 'compute.keep_states_every': keeping only some iterations' states needs "
                          "block jobs (compute.iterations_per_job > 1); a job per stage writes every state it computes")
    for name, defaults in config["methods"].items():
        _check(defaults, run_schema(name, complete=False), prefix=f"methods.{name}")
    for dataset, block in config["datasets"].items():
        for name, defaults in block.get("methods", {}).items():
            _check(defaults, run_schema(name, complete=False), prefix=f"datasets.{dataset}.methods.{name}")
    settings = all_run_settings(config)
    for key in ("evaluation", "anomaly"):
        for run in config[key]["runs"]:
            if run not in config["runs"]:
                raise ConfigError(f"config key '{key}.runs': {run!r} is not a key of 'runs' ({sorted(config['runs'])})")
    for run in config["anomaly"]["runs"]:
        method = settings[run]["method"]
        if not method_class(method).SCORES_ANOMALIES:
            raise ConfigError(f"config key 'anomaly.runs': run {run!r} uses method {method!r}, which defines no "
                              "anomaly score")
    _check_figures(config, settings)
    return settings


def _check_figures(config: dict, settings: dict) -> None:
    figures = config["figures"]
    for name, spec in figures.items():
        if "run" in spec and spec["run"] not in settings:
            raise ConfigError(f"config key 'figures.{name}.run': {spec['run']!r} is not a run")
        for run in spec.get("runs", []):
            if run not in settings:
                raise ConfigError(f"config key 'figures.{name}.runs': {run!r} is not a run")
        if "sweep" in spec and spec["sweep"] not in config["sweeps"]:
            raise ConfigError(f"config key 'figures.{name}.sweep': {spec['sweep']!r} is not a key of 'sweeps'")
    if "figure2" in figures:
        run = figures["figure2"]["run"]
        if settings[run]["latent_dim"] != 2:
            raise ConfigError("config key 'figures.figure2.run': Fig. 2 draws 2-D latents; give the run latent_dim: 2")
        _check_corrects(run, settings[run], "figures.figure2.run")
    for run in figures.get("figure3", {}).get("runs", []):
        if settings[run]["latent_dim"] != 2:
            raise ConfigError(f"config key 'figures.figure3.runs': run {run!r} has latent_dim "
                              f"{settings[run]['latent_dim']}; Fig. 3 draws 2-D latents")
    for run in figures.get("occlusion", {}).get("runs", []):
        if not settings[run].get("occlusion", {}).get("missing", 0):
            raise ConfigError(f"config key 'figures.occlusion.runs': run {run!r} learns from complete images; give "
                              "it occlusion: {missing: F} with 0 < F < 1 (a method with an occlusion setting)")
    for run in figures.get("aeot_celeba", {}).get("runs", []):
        if not method_class(settings[run]["method"]).SAMPLES_PRIOR_DRAWS:
            raise ConfigError(f"config key 'figures.aeot_celeba.runs': run {run!r} (method "
                              f"{settings[run]['method']!r}) does not sample by decoding N(0, I) draws, so "
                              "interpolating between those draws would not show its own samples")
    if "coupled_vae_mixture" in figures:
        mixture_settings(config)
    for run in figures.get("coupled_vae_mnist", {}).get("runs", []):
        if settings[run]["latent_dim"] != 2 or settings[run]["dataset"] in UNLABELLED_DATASETS:
            raise ConfigError(f"config key 'figures.coupled_vae_mnist.runs': run {run!r} needs latent_dim 2 and a "
                              "dataset with digit labels (its aggregate posterior is drawn in the plane, by digit)")
    runs = figures.get("aeot_mnist", {}).get("runs", [])
    if len({settings[run]["dataset"] for run in runs}) > 1 or any(settings[run]["dataset"] in UNLABELLED_DATASETS
                                                                 for run in runs):
        raise ConfigError("config key 'figures.aeot_mnist.runs': the runs must share one dataset with digit labels "
                          f"(the classifier score's), got {sorted({settings[run]['dataset'] for run in runs})}")
    for name, key in ABLATION_KEYS.items():  # the paper's rows of each table are values of that setting
        if name in figures and config["sweeps"][figures[name]["sweep"]]["key"] != key:
            raise ConfigError(f"config key 'figures.{name}.sweep': {name} varies {key!r}, sweep "
                              f"{figures[name]['sweep']!r} varies {config['sweeps'][figures[name]['sweep']]['key']!r}")
    for name in ("figure5", "table4"):
        if name in figures:
            if len(config["sweeps"][figures[name]["sweep"]]["runs"]) != 1:
                raise ConfigError(f"config key 'figures.{name}.sweep': the sweep must have one base run (one curve "
                                  "or column per value)")
            for _, _, run in sweep_points(config, figures[name]["sweep"], settings):
                _check_corrects(run, settings[run], f"figures.{name}.sweep", allow_none=name == "figure5")


ABLATION_KEYS = {"table3": "latent_dim", "table5": "langevin.steps", "table6": "learning.passes"}  # Sec. 6.4-6.5


def correction_iterations(method) -> list[int]:
    """The iterations 1..T of a planned run (``method.iterations`` = T) that have a ``correct`` stage."""
    return [t for t in range(1, method.iterations + 1) if "correct" in method.stages(t)]


def _check_corrects(run: str, run_settings_: dict, key: str, allow_none: bool = False) -> None:
    """A figure of the correction needs runs that correct at least once (alpha = 0 allowed where it is a curve)."""
    method = method_class(run_settings_["method"])(run_settings_)
    if "correct" not in method.STAGES:
        raise ConfigError(f"config key '{key}': run {run!r} (method {run_settings_['method']!r}) has no correction")
    if not correction_iterations(method) and not (allow_none and run_settings_["correction"]["alpha"] == 0):
        raise ConfigError(f"config key '{key}': run {run!r} never corrects (alpha = 0, or correction.every = "
                          f"{run_settings_['correction']['every']} > iterations = {run_settings_['iterations']})")


# ---------------------------------------------------------------- the runs


def run_settings(config: dict, run: str, dataset: str | None = None) -> dict:
    """The settings of ``runs[run]``, on ``dataset`` if given (else the run's own), validated.

    In order, each deep-merged over the last: ``training``, ``datasets.<D>.training``,
    ``methods.<method>``, ``datasets.<D>.methods.<method>`` (the paper's per-dataset settings),
    ``runs[run]``, where D is the run's dataset.
    """
    if run not in config["runs"]:
        raise ConfigError(f"unknown run {run!r}; the configuration defines {sorted(config['runs'])}")
    override = config["runs"][run]
    method = override["method"]
    own_dataset = override.get("dataset", config["training"]["dataset"])
    dataset = dataset or own_dataset
    per_dataset = config["datasets"].get(dataset, {})
    merged = config["training"]
    for layer in (per_dataset.get("training", {}), config["methods"].get(method, {}),
                  per_dataset.get("methods", {}).get(method, {}), override, {"dataset": dataset}):
        merged = deep_merge(merged, layer)
    where = f"runs.{run}" if dataset == own_dataset else f"runs.{run} on datasets.{dataset}"
    _check(merged, run_schema(method), prefix=where)
    if dataset == MIXTURE_DATASET:
        raise ConfigError(f"config key '{where}': dataset {MIXTURE_DATASET!r} (the Coupled VAE's 2-D mixture) has no "
                          "image files to prepare; its models belong in figures.coupled_vae_mixture.models")
    if dataset in UNLABELLED_DATASETS and (merged["classes"] is not None or merged["heldout_digit"] is not None):
        raise ConfigError(f"config key '{where}': dataset {dataset!r} has no digit labels, so 'classes' and "
                          "'heldout_digit' must be null")
    return merged



MIXTURE_DATASET = "mog25"


def mixture_settings(config: dict) -> dict[str, dict]:
    """figures.coupled_vae_mixture: model title -> its settings for seed 0, validated. In order, each deep-merged
    over the last: ``training``, ``methods.<method>``, the experiment's ``training``, the model's own keys, and
    dataset mog25."""
    spec = config["figures"]["coupled_vae_mixture"]
    models = {}
    for title, keys in spec["models"].items():
        merged = config["training"]
        for layer in (config["methods"].get(keys["method"], {}), spec["training"], keys,
                      {"dataset": MIXTURE_DATASET, "seed": 0, "classes": None, "train_images": None,
                       "heldout_digit": None}):
            merged = deep_merge(merged, layer)
        _check(merged, run_schema(keys["method"]), prefix=f"figures.coupled_vae_mixture.models.{title}")
        models[title] = merged
    return models


def dataset_run(run: str, dataset: str, settings: dict[str, dict]) -> str:
    """The key of run ``run`` trained on ``dataset``: ``run`` itself on its own dataset, else ``<run>-<dataset>``."""
    return run if settings[run]["dataset"] == dataset else f"{run}-{dataset}"


def _dataset_variants(config: dict, keys: list[str], settings: dict[str, dict]) -> dict[str, dict]:
    """Settings of the keys ``<run>-<dataset>`` among ``keys`` that are not runs yet: run ``run`` on ``dataset``."""
    variants = {}
    for key in keys:
        run, _, dataset = key.rpartition("-")
        if key not in settings and run in config["runs"] and dataset in DATASETS:
            variants[key] = run_settings(config, run, dataset)
    return variants


def _referenced_runs(config: dict) -> list[str]:
    """Every run key that the sweeps and figures name."""
    keys = [run for sweep in config["sweeps"].values() for run in sweep["runs"]]
    for spec in config["figures"].values():
        keys += [spec["run"]] if "run" in spec else list(spec.get("runs", []))
    return keys


def table1_runs(config: dict, settings: dict[str, dict]) -> list[str]:
    """The run keys of Table 1's measured rows: each of ``evaluation.runs`` on each of ``evaluation.datasets``."""
    evaluation = config["evaluation"]
    return [dataset_run(run, dataset, settings) for dataset in evaluation["datasets"] for run in evaluation["runs"]]


def set_key(settings: dict, dotted: str, value: Any) -> dict:
    """A copy of ``settings`` with the dotted key set to ``value`` (the key must exist)."""
    changed = copy.deepcopy(settings)
    *parents, last = dotted.split(".")
    node = changed
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(f"'{dotted}' is not a key of the run settings")
    if last not in node:
        raise ConfigError(f"'{dotted}' is not a key of the run settings")
    node[last] = copy.deepcopy(value)
    return changed


def _value_label(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def sweep_points(config: dict, name: str, settings: dict[str, dict]) -> list[tuple[str, Any, str]]:
    """(base run, value, run key) of every point of sweep ``name``.

    The run key is ``<base>-<leaf><value>`` (``ours-step_size0.03``) unless a run with exactly
    those settings exists already, which then serves (``ours`` itself for its own alpha).
    """
    sweep = config["sweeps"][name]
    leaf = sweep["key"].split(".")[-1]
    points = []
    for base in sweep["runs"]:
        if base not in settings:
            raise ConfigError(f"config key 'sweeps.{name}.runs': {base!r} is not a run")
        for value in sweep["values"]:
            try:
                changed = set_key(settings[base], sweep["key"], value)
            except ConfigError as exc:
                raise ConfigError(f"config key 'sweeps.{name}.key': {exc}") from None
            _check(changed, run_schema(changed["method"]), prefix=f"sweeps.{name} ({base}, {value!r})")
            same = [key for key, other in settings.items() if other == changed]
            points.append((base, value, same[0] if same else f"{base}-{leaf}{_value_label(value)}"))
    return points


def anomaly_run(model: str, digit: int, seed: int) -> str:
    """Run key of one anomaly-protocol run (Table 2)."""
    return f"{model}-holdout{digit}-seed{seed}"


def all_run_settings(config: dict) -> dict[str, dict]:
    """Settings of every run: the keys of ``runs``, Table 1's runs on each of ``evaluation.datasets``,
    the ``<run>-<dataset>`` keys that sweeps and figures name, the sweep points and the anomaly runs."""
    settings = {run: run_settings(config, run) for run in config["runs"]}
    for run in config["evaluation"]["runs"]:
        if run not in settings:
            continue  # reported by validate_config
        for dataset in config["evaluation"]["datasets"]:
            key = dataset_run(run, dataset, settings)
            if key not in settings:
                settings[key] = run_settings(config, run, dataset)
    settings.update(_dataset_variants(config, _referenced_runs(config), settings))
    for name in config["sweeps"]:
        for base, value, key in sweep_points(config, name, settings):
            settings.setdefault(key, set_key(settings[base], config["sweeps"][name]["key"], value))
    anomaly = config["anomaly"]
    for model in anomaly["runs"]:
        if model not in settings:
            continue  # reported by validate_config
        for digit in anomaly["digits"]:
            for seed in range(anomaly["seeds"]):
                key = anomaly_run(model, digit, seed)
                merged = deep_merge(settings[model], {**anomaly["training"], "heldout_digit": digit, "seed": seed})
                _check(merged, run_schema(merged["method"]), prefix=f"anomaly ({key})")
                settings[key] = merged
    return settings


def stage_settings(settings: dict) -> dict:
    """What one iteration computes: a run's settings without ``iterations``.

    A run's ``config.json``, which every stage reads, holds these, so that raising T only adds
    iterations instead of invalidating the ones already computed.
    """
    return {key: value for key, value in settings.items() if key != "iterations"}


def load_run_settings(path: str | Path) -> dict:
    """Read and validate a run's ``config.json`` (written by the workflow's ``run_config`` rule)."""
    try:
        settings = load_json(path, "run configuration")
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    check_run_settings(settings, str(path))
    return settings


def check_run_settings(settings: dict, where: str, planned: bool = False) -> None:
    """Validate the settings of a ``config.json`` (:func:`stage_settings`: all but ``iterations``), or with
    ``planned`` those of a whole run (``iterations`` too); ``where`` prefixes the key named in the error."""
    if not isinstance(settings, dict) or not isinstance(settings.get("method"), str):
        raise ConfigError(f"config key '{where}.method': a run's settings must name its method")
    schema = run_schema(settings["method"])
    if not planned:
        del schema["properties"]["iterations"]
        schema["required"].remove("iterations")
    _check(settings, schema, prefix=where)


# ---------------------------------------------------------------- command-line values


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
        if _has_type(parsed, types) or (not types and parsed is not None and not isinstance(parsed, str)):
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


def _run_override_schema(method: Any) -> dict:
    try:
        return run_schema(method, complete=False) if isinstance(method, str) else {}
    except ConfigError:
        return {}


def coerce_command_line_values(config: dict) -> dict:
    """``config`` with schema-typed scalars given as strings turned into their types.

    Snakemake's ``--config key='{a: 4}'`` parses nested values with YAML's BaseLoader, so every
    nested scalar arrives as a string ('4', 'true', 'null'); where the schema asks for a number,
    boolean or null, the string is read as YAML. Run and method blocks are read with their
    method's schema; strings that do not parse to an allowed type are left for validation to reject.
    """
    schema = load_schema()
    coerced = _coerce(config, schema, schema)
    for name, defaults in coerced.get("methods", {}).items():
        if isinstance(defaults, dict):
            coerced["methods"][name] = _coerce(defaults, _run_override_schema(name), {})
    for key, run in coerced.get("runs", {}).items():
        if isinstance(run, dict):
            coerced["runs"][key] = _coerce(run, _run_override_schema(run.get("method")), {})
    return coerced


# ---------------------------------------------------------------- random streams and devices


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
    """TF32 matrix units for CUDA float32 matmuls and convolutions, or IEEE float32 (the default).

    Uses PyTorch's ``fp32_precision`` API throughout (the legacy ``allow_tf32`` flags may not be
    mixed with it); note that cuDNN convolutions default to TF32 unless set, as here, to "ieee".
    """
    precision = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision

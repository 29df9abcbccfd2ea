"""A config file as the workflow would run it: the schema's defaults filled in, then checked.

The same two steps as the Snakefile: `snakemake.utils.validate(config, schema,
set_default=True)`, then `marseval.workflow.check_config` (datasets and models against the
registries, protocol options). A failure names the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from marseval.errors import PlanError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def load_config(path: Path, schema: Path = SCHEMA) -> dict[str, Any]:
    """The validated config of `path` with every default the workflow would add."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise PlanError(f"config {path}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise PlanError(f"config {path}: not YAML: {exc}") from None
    if not isinstance(config, dict):
        raise PlanError(f"config {path}: expected a mapping of config keys, "
                        f"got {type(config).__name__}")
    _validate(config, path, schema)
    from marseval.workflow import ConfigError, check_config

    try:
        check_config(config)
    except ConfigError as exc:
        raise PlanError(f"config {path}: {exc}") from None
    return config


def _validate(config: dict[str, Any], path: Path, schema: Path) -> None:
    from snakemake.utils import validate

    try:
        validate(config, str(schema), set_default=True)
    except Exception as exc:  # snakemake's WorkflowError: the message dumps the whole schema
        raise PlanError(f"config {path}: {_first_problem(config, schema) or exc}") from None


def _first_problem(config: dict[str, Any], schema: Path) -> str | None:
    """The schema violation jsonschema ranks first, as `config key a.b: message`."""
    import jsonschema

    spec = yaml.safe_load(schema.read_text())
    validator = jsonschema.validators.validator_for(spec)(spec)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    key = ".".join(str(p) for p in error.absolute_path)
    return f"config key {key}: {error.message}" if key else error.message

"""The block contract as pure data rules: data.json, the manifest, parameters, capabilities, progress, errors.

Nothing here does I/O beyond reading JSON, and nothing heavy is imported, so the names are
imported eagerly. The whole error tree lives in `blockkit.contract.errors` (a public module).
"""

from __future__ import annotations

from blockkit.contract._capabilities import Capabilities, match_problems, resolve_output
from blockkit.contract._datajson import (
    DATA_JSON,
    DATA_PATH,
    FeatureCollection,
    data_path_of,
    load_data_json,
    parse_data_json,
    validate_feature_collection,
    write_data_json,
)
from blockkit.contract.errors import (
    ApiConnectionError,
    BlockkitError,
    ExitCode,
    InputParametersError,
    ManifestError,
    NoInputError,
    NoOutputError,
    OutOfMemory,
    Problem,
    UnexpectedError,
    ValidationError,
    WorkflowError,
    WrongInputError,
)
from blockkit.contract._manifest import (
    MANIFEST_FILE,
    Manifest,
    ParameterSpec,
    load_manifest,
    parse_manifest,
    validate_manifest,
)
from blockkit.contract._parameters import parse_parameters_text, redact_parameters, resolve_parameters
from blockkit.contract._progress import PROGRESS_PREFIX, format_progress, parse_progress

__all__ = [
    "DATA_JSON",
    "DATA_PATH",
    "MANIFEST_FILE",
    "PROGRESS_PREFIX",
    "ApiConnectionError",
    "BlockkitError",
    "Capabilities",
    "ExitCode",
    "FeatureCollection",
    "InputParametersError",
    "Manifest",
    "ManifestError",
    "NoInputError",
    "NoOutputError",
    "OutOfMemory",
    "ParameterSpec",
    "Problem",
    "UnexpectedError",
    "ValidationError",
    "WorkflowError",
    "WrongInputError",
    "data_path_of",
    "format_progress",
    "load_data_json",
    "load_manifest",
    "match_problems",
    "parse_data_json",
    "parse_manifest",
    "parse_parameters_text",
    "parse_progress",
    "redact_parameters",
    "resolve_output",
    "resolve_parameters",
    "validate_feature_collection",
    "validate_manifest",
    "write_data_json",
]

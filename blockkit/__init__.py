"""blockkit: block-container processing of Earth-observation data.

The public API is re-exported here. Importing blockkit stays light: rasterio, shapely
and numpy are only imported by the helpers that need them.
"""

from __future__ import annotations

from blockkit.contract._datajson import DATA_PATH, FeatureCollection, load_data_json, write_data_json
from blockkit.contract.errors import (
    ApiConnectionError,
    BlockkitError,
    ExitCode,
    InputParametersError,
    NoInputError,
    NoOutputError,
    OutOfMemory,
    UnexpectedError,
    ValidationError,
    WrongInputError,
)
from blockkit.contract._manifest import Manifest, load_manifest
from blockkit.runtime._block import DataBlock, ProcessingBlock, data_block, processing_block
from blockkit.runtime._context import BlockContext
from blockkit.runtime._query import Query

__version__ = "0.1.0"

__all__ = [
    "DATA_PATH",
    "ApiConnectionError",
    "BlockContext",
    "BlockkitError",
    "DataBlock",
    "ExitCode",
    "FeatureCollection",
    "InputParametersError",
    "Manifest",
    "NoInputError",
    "NoOutputError",
    "OutOfMemory",
    "ProcessingBlock",
    "Query",
    "UnexpectedError",
    "ValidationError",
    "WrongInputError",
    "data_block",
    "load_data_json",
    "load_manifest",
    "processing_block",
    "write_data_json",
]

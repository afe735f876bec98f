"""Exit code names: the block's own codes, the runner's timeout, signals and strangers."""

from __future__ import annotations

import pytest

from blockkit.contract.errors import TIMEOUT_EXIT_CODE, ExitCode


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (0, "OK"),
        (2, "INPUT_PARAMETERS_ERROR"),
        (6, "NO_OUTPUT_ERROR"),
        (137, "OUT_OF_MEMORY"),
        (TIMEOUT_EXIT_CODE, "TIMEOUT"),
        (-9, "KILLED_BY_SIGNAL_9"),
        (42, "not a UP42 exit code"),
        (100, "not a UP42 exit code"),  # blockutils' ERR_INCORRECT_ERRCODE
    ],
)
def test_describe_names_every_code(code: int, name: str) -> None:
    assert ExitCode.describe(code) == name

"""Exit codes and the error hierarchy: every failure carries its exit code and one actionable line."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


#: Exit code of a step killed for running past its timeout (as GNU `timeout` uses); not a block's own code.
TIMEOUT_EXIT_CODE = 124


class ExitCode(IntEnum):
    """Block exit codes (UP42-compatible, plus 137 for out-of-memory)."""

    OK = 0
    UNEXPECTED_ERROR = 1
    INPUT_PARAMETERS_ERROR = 2
    NO_INPUT_ERROR = 3
    WRONG_INPUT_ERROR = 4
    API_CONNECTION_ERROR = 5
    NO_OUTPUT_ERROR = 6
    OUT_OF_MEMORY = 137

    @classmethod
    def describe(cls, code: int) -> str:
        """Return the name of an exit code, or say that it is not one of the contract's."""
        try:
            return cls(code).name
        except ValueError:
            if code == TIMEOUT_EXIT_CODE:
                return "TIMEOUT"
            if code < 0:
                return f"KILLED_BY_SIGNAL_{-code}"
            return "not a UP42 exit code"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a user input: where it is and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class BlockkitError(Exception):
    """Root of every blockkit error; carries an exit code and a one-line message."""

    exit_code: ExitCode = ExitCode.UNEXPECTED_ERROR

    def __init__(self, message: str, *, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems: list[Problem] = list(problems or [])

    def headline(self) -> str:
        """The one line a person reads first: `[EXIT_NAME] message`."""
        return f"[{self.exit_code.name}] {self.message}"

    def details(self) -> str:
        """Every problem, one per line (empty when the headline says it all)."""
        return "\n".join(f"  - {p}" for p in self.problems)

    def __str__(self) -> str:
        return self.headline()


class ValidationError(BlockkitError):
    """A user input (manifest, data.json, params, workflow) has one or more problems."""

    @classmethod
    def from_problems(cls, what: str, problems: list[Problem]) -> "ValidationError":
        """Summarise a list of problems under one headline naming the first."""
        first = problems[0] if problems else Problem("", "invalid")
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return cls(f"{what}: {first}{more}", problems=problems)


class UnexpectedError(BlockkitError):
    exit_code = ExitCode.UNEXPECTED_ERROR


class InputParametersError(ValidationError):
    exit_code = ExitCode.INPUT_PARAMETERS_ERROR


class NoInputError(BlockkitError):
    exit_code = ExitCode.NO_INPUT_ERROR


class WrongInputError(ValidationError):
    exit_code = ExitCode.WRONG_INPUT_ERROR


class ApiConnectionError(BlockkitError):
    exit_code = ExitCode.API_CONNECTION_ERROR


class NoOutputError(ValidationError):
    exit_code = ExitCode.NO_OUTPUT_ERROR


class OutOfMemory(BlockkitError):
    exit_code = ExitCode.OUT_OF_MEMORY


class ManifestError(ValidationError):
    """UP42Manifest.json is missing or invalid."""

    exit_code = ExitCode.WRONG_INPUT_ERROR


class WorkflowError(ValidationError):
    """workflow.yaml is invalid or a step cannot be planned."""

    exit_code = ExitCode.WRONG_INPUT_ERROR

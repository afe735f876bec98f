"""Every blockkit error, in one tree: each class carries its exit code and a one-line message.

The exit code is one mechanism: the class attribute `exit_code` (an `ExitCode`), set on each
subsystem root and refined by a subclass only where its meaning differs (a lost connection
inside storage is API_CONNECTION_ERROR, not WRONG_INPUT_ERROR). A class never inherits from
an unrelated class to get a code. Two errors report a status known only when they are raised:
`RunFailed` (the failed step's own exit status) and `Interrupted` (128 + the signal, as shells
do); they override `exit_status` and `exit_name`, never `exit_code`.

The hierarchy (checked against the classes by tests/contract/test_errors.py):

    BlockkitError [UNEXPECTED_ERROR]
    ├── UnexpectedError [UNEXPECTED_ERROR]
    ├── InvalidArgument (also ValueError) [UNEXPECTED_ERROR]
    ├── ValidationError [WRONG_INPUT_ERROR]
    │   ├── InputParametersError [INPUT_PARAMETERS_ERROR]
    │   ├── WrongInputError [WRONG_INPUT_ERROR]
    │   │   └── GeometryError (also ValueError) [WRONG_INPUT_ERROR]
    │   ├── NoOutputError [NO_OUTPUT_ERROR]
    │   │   └── SealError [NO_OUTPUT_ERROR]
    │   ├── ManifestError [WRONG_INPUT_ERROR]
    │   │   └── EntryPointError [WRONG_INPUT_ERROR]
    │   └── WorkflowError [WRONG_INPUT_ERROR]
    │       └── ExportError [WRONG_INPUT_ERROR]
    ├── NoInputError [NO_INPUT_ERROR]
    ├── ApiConnectionError [API_CONNECTION_ERROR]
    ├── OutOfMemory [OUT_OF_MEMORY]
    ├── KeystoreError [WRONG_INPUT_ERROR]
    │   ├── KeyNotFound [WRONG_INPUT_ERROR]
    │   ├── WrongKeyType [WRONG_INPUT_ERROR]
    │   ├── WrongPassphrase [WRONG_INPUT_ERROR]
    │   ├── MissingPrivateKey [WRONG_INPUT_ERROR]
    │   ├── DamagedPrivateKey [WRONG_INPUT_ERROR]
    │   ├── KeyPairMismatch [WRONG_INPUT_ERROR]
    │   ├── InsecureKeyFile [WRONG_INPUT_ERROR]
    │   └── TamperedEntry [WRONG_INPUT_ERROR]
    ├── ArtifactsError [INPUT_PARAMETERS_ERROR]
    │   ├── NoProviderConfigured [INPUT_PARAMETERS_ERROR]
    │   ├── UnsupportedKeyType [INPUT_PARAMETERS_ERROR]
    │   ├── UploadFailed [API_CONNECTION_ERROR]
    │   └── ExpiryOutOfRange [INPUT_PARAMETERS_ERROR]
    ├── StorageError [WRONG_INPUT_ERROR]
    │   ├── UnsupportedURI [WRONG_INPUT_ERROR]
    │   ├── UnsafePath [WRONG_INPUT_ERROR]
    │   ├── TargetNotEmpty [WRONG_INPUT_ERROR]
    │   ├── SourceNotFound [WRONG_INPUT_ERROR]
    │   ├── AccessDenied [WRONG_INPUT_ERROR]
    │   ├── TooLarge [WRONG_INPUT_ERROR]
    │   ├── InsecureCredentials [WRONG_INPUT_ERROR]
    │   └── TransferFailed [API_CONNECTION_ERROR]
    ├── GatewayError [UNEXPECTED_ERROR]
    │   ├── GatewayConfigError [UNEXPECTED_ERROR]
    │   └── GatewayStartError [UNEXPECTED_ERROR]
    ├── DockerError [UNEXPECTED_ERROR]
    │   ├── DockerUnavailableError [UNEXPECTED_ERROR]
    │   ├── ImageMissingError [UNEXPECTED_ERROR]
    │   ├── BaseImageMissingError [UNEXPECTED_ERROR]
    │   ├── BuildError [UNEXPECTED_ERROR]
    │   └── PushError [UNEXPECTED_ERROR]
    ├── EngineError [UNEXPECTED_ERROR]
    │   └── BlockEnvError [UNEXPECTED_ERROR]
    ├── RunError [UNEXPECTED_ERROR]
    │   ├── RunFailed [UNEXPECTED_ERROR]
    │   └── SealTimeout [UNEXPECTED_ERROR]
    └── Interrupted [UNEXPECTED_ERROR]
        └── RunInterrupted [UNEXPECTED_ERROR]

Off the tree, on purpose (never shown to a person as they are):
- `blockkit.gateway._errors.S3Error`: an S3 error *response* (status, code, XML body) the gateway
  sends to its client; it never leaves the request handler.
- `blockkit.storage._transfer.TransientError`: "worth retrying"; the retry loop turns the last one
  into `TransferFailed`.
- `HashDeadline` (runner.hashing), `_Changed` (runner.seal), `_Cancelled` (runner.run): control
  flow inside one module, caught there and mapped (to `SealTimeout`, `SealError`, an interrupted step).
- `TypeError` for a wrong argument *type* (a bug in the calling code, whose traceback its author
  needs); `ValueError` from JSON parse hooks, which the parser turns into a `ValidationError`;
  `ValueError` from `runner.schedule.Scheduler` for duplicate or unknown task names, an invariant
  the planner guarantees (seeing it is a bug in blockkit, and the CLI says UNEXPECTED_ERROR).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path


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
    """Root of every blockkit error: an exit code, a one-line message, the problems behind it, and hints."""

    exit_code: ExitCode = ExitCode.UNEXPECTED_ERROR

    def __init__(self, message: str, *, problems: list[Problem] | None = None,
                 hints: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems: list[Problem] = list(problems or [])
        #: What a person can do about it (a command to run, a file to look at), one line each.
        self.hints: list[str] = list(hints or [])

    @property
    def exit_name(self) -> str:
        """The name shown in the headline: the exit code's name."""
        return self.exit_code.name

    @property
    def exit_status(self) -> int:
        """The status a process exits with for this error (never 0)."""
        return int(self.exit_code) or 1

    def headline(self) -> str:
        """The one line a person reads first: `[EXIT_NAME] message`."""
        return f"[{self.exit_name}] {self.message}"

    def details(self) -> str:
        """Every problem, one per line (empty when the headline says it all)."""
        if len(self.problems) == 1 and str(self.problems[0]) in self.message:
            return ""  # the headline already names the only problem
        return "\n".join(f"  - {p}" for p in self.problems)

    def __str__(self) -> str:
        return self.headline()


# --- the block contract: the codes a block exits with --------------------------------------------


class UnexpectedError(BlockkitError):
    """Something went wrong that no other error describes (UP42's exit 1)."""

    exit_code = ExitCode.UNEXPECTED_ERROR


class InvalidArgument(BlockkitError, ValueError):
    """A runtime helper was called with a value it cannot use: a bug in the calling block.

    Also a ValueError, so blocks that caught ValueError from these helpers keep working.
    """

    exit_code = ExitCode.UNEXPECTED_ERROR


class ValidationError(BlockkitError):
    """A user input (manifest, data.json, params, workflow, a command's argument) has one or more problems."""

    exit_code = ExitCode.WRONG_INPUT_ERROR

    @classmethod
    def from_problems(cls, what: str, problems: list[Problem]) -> "ValidationError":
        """Summarise a list of problems under one headline naming the first."""
        first = problems[0] if problems else Problem("", "invalid")
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return cls(f"{what}: {first}{more}", problems=problems)


class InputParametersError(ValidationError):
    """The block's parameters fail the manifest's schema."""

    exit_code = ExitCode.INPUT_PARAMETERS_ERROR


class WrongInputError(ValidationError):
    """The input data.json is invalid, or a data_path is missing or unsafe."""

    exit_code = ExitCode.WRONG_INPUT_ERROR


class GeometryError(WrongInputError, ValueError):
    """A geometry (of a feature or an area of interest) a geometry helper cannot use.

    Also a ValueError, so blocks that caught ValueError from these helpers keep working.
    """


class NoOutputError(ValidationError):
    """The block produced no output, or an invalid one."""

    exit_code = ExitCode.NO_OUTPUT_ERROR


class SealError(NoOutputError):
    """A step's output holds something the runner will not take over (a symlink, a device, too much data)."""


class ManifestError(ValidationError):
    """UP42Manifest.json is missing or invalid."""

    exit_code = ExitCode.WRONG_INPUT_ERROR


class EntryPointError(ManifestError):
    """A block has no entry point the runner can start (manifest command, Dockerfile or code layout)."""


class WorkflowError(ValidationError):
    """workflow.yaml is invalid or a step cannot be planned."""

    exit_code = ExitCode.WRONG_INPUT_ERROR


class ExportError(WorkflowError):
    """The workflow is valid but cannot be expressed in CWL as asked."""


class NoInputError(BlockkitError):
    """Input is required but data.json is missing or empty."""

    exit_code = ExitCode.NO_INPUT_ERROR


class ApiConnectionError(BlockkitError):
    """A remote source failed after retries."""

    exit_code = ExitCode.API_CONNECTION_ERROR


class OutOfMemory(BlockkitError):
    """The block ran out of memory (MemoryError, or the container was OOM-killed)."""

    exit_code = ExitCode.OUT_OF_MEMORY


# --- storage: keystore, artifacts, stage-in and stage-out ----------------------------------------


class KeystoreError(BlockkitError):
    """The keystore cannot give out a key (missing, locked, tampered, wrong type)."""

    exit_code = ExitCode.WRONG_INPUT_ERROR


class KeyNotFound(KeystoreError):
    """No key of that name in the keystore."""


class WrongKeyType(KeystoreError):
    """The key exists but is of another type than the caller needs."""


class WrongPassphrase(KeystoreError):
    """The keystore's private key could not be unlocked with the given passphrase."""


class MissingPrivateKey(KeystoreError):
    """The keystore holds keys or a public key but its private key file is gone (never recreated silently)."""


class DamagedPrivateKey(KeystoreError):
    """The private key file is there but unreadable: truncated, edited or not a PEM private key."""


class KeyPairMismatch(KeystoreError):
    """public_key.pem is not the public half of private_key.pem: new keys would be unreadable."""


class InsecureKeyFile(KeystoreError):
    """The unencrypted private key file is readable by others."""


class TamperedEntry(KeystoreError):
    """An entry failed authentication: it was modified, swapped or belongs to another keystore."""


class ArtifactsError(BlockkitError):
    """Root of artifact (upload + presigned URL) errors."""

    exit_code = ExitCode.INPUT_PARAMETERS_ERROR


class NoProviderConfigured(ArtifactsError):
    """No keystore key names an object store to put artifacts in."""


class UnsupportedKeyType(ArtifactsError):
    """The key is not an S3 key, so it cannot hold artifacts."""


class UploadFailed(ArtifactsError):
    """The object store refused or lost the upload."""

    exit_code = ExitCode.API_CONNECTION_ERROR


class ExpiryOutOfRange(ArtifactsError):
    """A presigned URL expiry outside 1 s .. 7 days."""


class StorageError(BlockkitError):
    """A stage-in/out request that cannot be served as given."""

    exit_code = ExitCode.WRONG_INPUT_ERROR


class UnsupportedURI(StorageError):
    """Unknown scheme or malformed URI."""


class UnsafePath(StorageError):
    """A key or asset href would write outside the target folder."""


class TargetNotEmpty(StorageError):
    """A stage-out target already holds files: refused unless overwrite is asked for."""


class SourceNotFound(StorageError):
    """The source answered 404 or the path does not exist."""


class AccessDenied(StorageError):
    """The source or target answered 401/403: wrong or missing credentials."""


class TooLarge(StorageError):
    """A file or a whole stage-in is larger than its limit (TransferLimits), or a body is compressed."""


class InsecureCredentials(StorageError):
    """A key's credentials would travel over plain http to a host that is not loopback."""


class TransferFailed(StorageError):
    """A transfer failed after retries, or the bytes did not match size/checksum."""

    exit_code = ExitCode.API_CONNECTION_ERROR


# --- the S3 gateway --------------------------------------------------------------------------------


class GatewayError(BlockkitError):
    """The gateway could not be set up or started."""

    exit_code = ExitCode.UNEXPECTED_ERROR


class GatewayConfigError(GatewayError):
    """A bucket name or folder given to the gateway is unusable."""


class GatewayStartError(GatewayError):
    """The gateway could not listen (port in use, subprocess or sidecar container died, ...)."""


# --- the runner: Docker, engines, runs ----------------------------------------------------------


class DockerError(BlockkitError):
    """The Docker engine itself failed (not the block)."""

    exit_code = ExitCode.UNEXPECTED_ERROR


class DockerUnavailableError(DockerError):
    """No Docker daemon answers (or the docker SDK is not installed)."""


class ImageMissingError(DockerError):
    """A step's image does not exist locally (and nothing can be pulled)."""


class BaseImageMissingError(DockerError):
    """The base image to build on does not exist locally."""


class BuildError(DockerError):
    """`docker build` (or preparing its wheels) failed."""


class PushError(DockerError):
    """A push that the registry or the daemon refused (not a connection problem): exit 1 with their words."""


class EngineError(BlockkitError):
    """An engine could not start a step at all (not a block failure)."""

    exit_code = ExitCode.UNEXPECTED_ERROR


class BlockEnvError(EngineError):
    """A block's virtual environment could not be made."""


class RunError(BlockkitError):
    """A run could not be carried through (a step failed, taking over its output ran out of time)."""

    exit_code = ExitCode.UNEXPECTED_ERROR


class RunFailed(RunError):
    """A step of a run failed; the message names the step and its exit code, which the run exits with."""

    def __init__(self, message: str, *, step: str, step_exit: int, run_dir: Path) -> None:
        super().__init__(message)
        self.step = step
        self.step_exit = step_exit
        self.run_dir = run_dir
        if step_exit in ExitCode._value2member_map_:
            self.exit_code = ExitCode(step_exit)

    @property
    def exit_name(self) -> str:
        """The step's exit code's name (TIMEOUT, OUT_OF_MEMORY, ...)."""
        return ExitCode.describe(self.step_exit)

    @property
    def exit_status(self) -> int:
        """The step's own exit status (1 when it is not one a process can exit with)."""
        return self.step_exit if 0 < self.step_exit < 256 else 1


class SealTimeout(RunError):
    """Taking over a step's output ran past the step's timeout."""


class Interrupted(BlockkitError):
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP stopped the command; it exits 128 + the signal, as shells report it."""

    def __init__(self, message: str, *, signum: int | None = None, hints: list[str] | None = None) -> None:
        super().__init__(message, hints=hints)
        self.signum = int(signum or signal.SIGINT)

    @property
    def exit_name(self) -> str:
        """Always INTERRUPTED."""
        return "INTERRUPTED"

    @property
    def exit_status(self) -> int:
        """128 + the signal number (130 for Ctrl-C)."""
        return 128 + self.signum


class RunInterrupted(Interrupted):
    """The run was stopped; its folder says which steps finished, and `resume` continues it."""

    def __init__(self, run_dir: Path, *, signum: int | None = None, resume: str | None = None) -> None:
        by = f" by {signal.Signals(signum).name}" if signum else ""
        then = f"; resume with: {resume}" if resume else ""
        super().__init__(f"run {run_dir.name} interrupted{by}{then}", signum=signum)
        self.run_dir = run_dir

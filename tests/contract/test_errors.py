"""The error tree: one module, drawn in its docstring, every class with an exit code; exit code names."""

from __future__ import annotations

import ast
import inspect
import signal
from pathlib import Path

import pytest

import blockkit
import blockkit.contract.errors as errors
from blockkit.contract.errors import (
    TIMEOUT_EXIT_CODE,
    AccessDenied,
    BlockkitError,
    ExitCode,
    Problem,
    RunFailed,
    RunInterrupted,
    StorageError,
    TransferFailed,
    ValidationError,
    WrongInputError,
)

PACKAGE = Path(blockkit.__file__).parent


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


def _tree_classes() -> list[type[BlockkitError]]:
    return [cls for cls in vars(errors).values()
            if isinstance(cls, type) and issubclass(cls, BlockkitError) and cls.__module__ == errors.__name__]


def _draw(cls: type[BlockkitError], prefix: str = "", last: bool = True, root: bool = True) -> list[str]:
    """The drawing the module docstring carries: `Name (also Base) [EXIT_NAME]`, children in source order."""
    also = [b.__name__ for b in cls.__bases__ if not issubclass(b, BlockkitError) and cls is not BlockkitError]
    label = cls.__name__ + (f" (also {', '.join(also)})" if also else "") + f" [{cls.exit_code.name}]"
    lines = [label if root else f"{prefix}{'└── ' if last else '├── '}{label}"]
    children = [c for c in _tree_classes() if BlockkitError in c.__mro__ and c.__bases__[0] is cls]
    inner = "" if root else prefix + ("    " if last else "│   ")
    for i, child in enumerate(children):
        lines += _draw(child, inner, i == len(children) - 1, root=False)
    return lines


def test_the_docstring_draws_the_real_tree() -> None:
    doc = errors.__doc__ or ""
    drawn = [line[4:] for line in doc.splitlines() if line.startswith("    ") and ("[" in line)]
    assert drawn == _draw(BlockkitError), "\n".join(_draw(BlockkitError))
    assert {c.__name__ for c in _tree_classes()} == {line.split("── ")[-1].split()[0] for line in drawn}


def test_every_class_has_an_exit_code_and_a_docstring() -> None:
    for cls in _tree_classes():
        assert isinstance(cls.exit_code, ExitCode), cls
        assert cls.__doc__ and cls.__doc__ != BlockkitError.__doc__ or cls is BlockkitError, cls


def test_subsystem_roots_sit_directly_under_the_root_and_set_their_own_code() -> None:
    roots = [c for c in _tree_classes() if c.__bases__[0] is BlockkitError]
    assert {"StorageError", "KeystoreError", "ArtifactsError", "GatewayError", "DockerError", "EngineError",
            "RunError", "ValidationError", "Interrupted"} <= {c.__name__ for c in roots}
    for root in roots:
        if root is not errors.Interrupted:  # its status is 128 + the signal (see exit_status)
            assert "exit_code" in vars(root), f"{root.__name__} must say its exit code"
    # Storage is its own subsystem: a refused key is not a "validation" problem of the user's input.
    assert not issubclass(StorageError, (ValidationError, WrongInputError))
    assert not issubclass(AccessDenied, ValidationError)
    assert AccessDenied("x").exit_code == ExitCode.WRONG_INPUT_ERROR
    assert TransferFailed("x").exit_code == ExitCode.API_CONNECTION_ERROR


def test_a_class_gets_its_code_from_the_attribute_never_from_an_unrelated_class() -> None:
    """A subclass that keeps its parent's code does so because it is a kind of its parent (same subsystem)."""
    for cls in _tree_classes():
        tree_bases = [b for b in cls.__bases__ if issubclass(b, BlockkitError)]
        assert len(tree_bases) <= 1, f"{cls.__name__} has two parents on the tree: {tree_bases}"


def test_no_module_outside_the_errors_module_defines_a_blockkit_error() -> None:
    names = {c.__name__ for c in _tree_classes()}
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path == Path(errors.__file__) or "templates" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b).split(".")[-1] for b in node.bases}
                if bases & (names | {"BlockkitError"}):
                    found.append(f"{path.relative_to(PACKAGE)}: class {node.name}({', '.join(sorted(bases))})")
    assert not found, "define errors in blockkit/contract/errors.py:\n" + "\n".join(found)


def test_headline_details_and_status() -> None:
    one = ValidationError.from_problems("bad thing", [Problem("field", "wrong")])
    assert one.headline() == "[WRONG_INPUT_ERROR] bad thing: field: wrong"
    assert one.details() == ""  # the headline already says it: not printed twice
    two = ValidationError.from_problems("bad thing", [Problem("a", "x"), Problem("b", "y")])
    assert two.details() == "  - a: x\n  - b: y" and "(and 1 more)" in two.headline()

    failed = RunFailed("step 's' failed", step="s", step_exit=124, run_dir=Path("/r/x"))
    assert (failed.exit_name, failed.exit_status) == ("TIMEOUT", 124)
    assert RunFailed("m", step="s", step_exit=3, run_dir=Path("/r")).exit_code == ExitCode.NO_INPUT_ERROR
    assert RunFailed("m", step="s", step_exit=300, run_dir=Path("/r")).exit_status == 1

    stopped = RunInterrupted(Path("/r/run-1"), signum=signal.SIGTERM, resume="blockkit run --resume run-1")
    assert stopped.headline() == "[INTERRUPTED] run run-1 interrupted by SIGTERM; resume with: blockkit run --resume run-1"
    assert stopped.exit_status == 143
    assert RunInterrupted(Path("/r/run-1")).exit_status == 130


def test_helpers_errors_are_still_value_errors() -> None:
    """Blocks that caught ValueError from the runtime helpers keep working."""
    assert issubclass(errors.InvalidArgument, ValueError) and issubclass(errors.GeometryError, ValueError)
    assert inspect.getmodule(errors.GeometryError) is errors


def test_the_docs_list_every_subsystem_root_with_its_code() -> None:
    docs = (PACKAGE.parent / "docs" / "errors.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[2].strip()
            for line in docs.splitlines() if line.startswith("| `")}
    roots = {c.__name__: c.exit_code.name for c in _tree_classes() if c.__bases__[0] is BlockkitError}
    roots["Interrupted"] = "128 + signal"
    assert rows == roots

"""Choosing an engine: docker when a daemon answers, else the embedded process engine."""

from __future__ import annotations

from blockkit.contract.errors import WorkflowError
from blockkit.runner.engine import Engine
from blockkit.runner.process_engine import ProcessEngine

ENGINE_NAMES = ("auto", "process", "docker")


def select_engine(name: str = "auto") -> tuple[Engine, str]:
    """The engine to use and a sentence saying why (and how its steps are isolated)."""
    engine, why = _select(name)
    note = getattr(engine, "isolation_note", "")
    return engine, f"{why}; {note}" if note else why


def _select(name: str) -> tuple[Engine, str]:
    if name not in ENGINE_NAMES:
        raise WorkflowError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}")
    if name == "process":
        return ProcessEngine(), "process engine (asked for)"
    try:
        from blockkit.runner.docker_engine import DockerEngine, connect_if_available
    except ImportError as exc:
        if name == "docker":
            raise WorkflowError(f"the docker engine needs the docker package: pip install 'blockkit[docker]' ({exc})") from None
        return ProcessEngine(), "process engine (the docker package is not installed)"
    client = connect_if_available()
    if client is not None:
        return DockerEngine(client), "docker engine (a Docker daemon answers)" if name == "auto" else "docker engine (asked for)"
    if name == "docker":
        raise WorkflowError("--engine docker: no Docker daemon answers; start one or use --engine process")
    return ProcessEngine(), "process engine (no Docker daemon answers)"

"""Choosing an engine by name from the registry: docker when a daemon answers, else the process engine."""

from __future__ import annotations

from blockkit.contract.errors import WorkflowError
from blockkit.runner._engine import Engine, register_engine, registered_engines
from blockkit.runner._process_engine import ProcessEngine


def _process() -> tuple[Engine, str]:
    return ProcessEngine(), "process engine (asked for)"


def _docker() -> tuple[Engine, str]:
    try:
        from blockkit.runner._docker_engine import DockerEngine, connect_if_available
    except ImportError as exc:
        raise WorkflowError(f"the docker engine needs the docker package: pip install 'blockkit-eo[docker]' ({exc})") from None
    client = connect_if_available()
    if client is None:
        raise WorkflowError("--engine docker: no Docker daemon answers; start one or use --engine process")
    return DockerEngine(client), "docker engine (asked for)"


def _auto() -> tuple[Engine, str]:
    try:
        from blockkit.runner._docker_engine import DockerEngine, connect_if_available
    except ImportError:
        return ProcessEngine(), "process engine (the docker package is not installed)"
    client = connect_if_available()
    if client is not None:
        return DockerEngine(client), "docker engine (a Docker daemon answers)"
    return ProcessEngine(), "process engine (no Docker daemon answers)"


register_engine("auto", _auto)
register_engine("process", _process)
register_engine("docker", _docker)
#: The built-in names (more may be registered with `register_engine`).
ENGINE_NAMES = ("auto", "process", "docker")


#: The entry-point group an installed package names its engines in: `NAME = "module:factory"`.
ENTRY_POINT_GROUP = "blockkit.engines"


def select_engine(name: str = "auto") -> tuple[Engine, str]:
    """The engine to use and a sentence saying why (and how its steps are isolated).

    A name nobody registered is looked up among the installed packages' `blockkit.engines`
    entry points, whose factory is then registered: so `blockkit run --engine NAME` finds an
    engine a package provides without any import of it.
    """
    factories = registered_engines()
    if name not in factories:
        from importlib.metadata import entry_points

        provided = entry_points(group=ENTRY_POINT_GROUP)
        if name not in provided.names:
            known = [*factories, *sorted(set(provided.names) - set(factories))]
            raise WorkflowError(f"unknown engine {name!r}; choose one of {', '.join(known)}")
        point = next(p for p in provided if p.name == name)  # the first, if two packages give the name
        try:
            factory = point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is one line, not a traceback
            raise WorkflowError(f"engine {name!r} ({point.value}, entry point of {point.dist.name if point.dist else '?'}) "
                                f"cannot be loaded: {type(exc).__name__}: {exc}") from None
        register_engine(name, factory)
        factories[name] = factory
    engine, why = factories[name]()
    note = engine.isolation_note
    return engine, f"{why}; {note}" if note else why

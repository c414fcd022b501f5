"""The engine calls of local jobs, as types: what aiodocker's objects and the
standard library's (:mod:`caliban.platforms.local.quick`) both provide.

Kept apart from both clients so that neither imports the other, and so that
:mod:`caliban.platforms.local.containers` can run jobs on either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol


class Handle(Protocol):
    """A container as finding, stopping and removing jobs' containers needs it:
    aiodocker's, or the stdlib client's (:mod:`caliban.platforms.local.quick`)."""

    @property
    def id(self) -> str: ...

    async def show(self) -> dict[str, Any]: ...

    async def stop(self, *, t: int | None = None) -> None: ...

    async def kill(self) -> None: ...

    async def delete(self, *, force: bool = False, v: bool = False) -> None: ...


class Engine(Protocol):
    """The few engine calls of ``status``, ``stop`` and ``logs``."""

    async def listed(self, filters: str) -> list[tuple[Handle, dict[str, Any]]]:
        """Every container (running or not) the label ``filters`` match, with its list
        entry (``Id``, ``Labels``, ``State``...)."""
        ...

    async def output(self, handle: Handle) -> list[str]:
        """Its output so far (stdout and stderr), as text."""
        ...

    def follow(self, handle: Handle) -> AsyncIterator[str]:
        """Its output so far, then as it comes until it exits."""
        ...


class Piece(Protocol):
    """One piece of attached output: ``stream`` 1 is stdout, 2 stderr."""

    @property
    def stream(self) -> int: ...

    @property
    def data(self) -> bytes: ...


class Attached(Protocol):
    """An attach, entered: the output from then on, None once it has ended."""

    async def __aenter__(self) -> Attached: ...

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any, /) -> Any: ...

    async def read_out(self) -> Piece | None: ...


class Container(Handle, Protocol):
    """A container a run drives: attached to, started, waited for."""

    async def start(self) -> None: ...

    async def wait(self) -> dict[str, Any]: ...

    def attach(self, *, stdout: bool = False, stderr: bool = False) -> Attached: ...

    def log(
        self, *, stdout: bool = False, stderr: bool = False, follow: Literal[True]
    ) -> AsyncIterator[str]: ...


class Containers(Protocol):
    async def create(self, config: dict[str, Any], *, name: str | None = None) -> Container: ...

    def container(self, container_id: str) -> Container: ...

    async def get(self, container_id: str) -> Container: ...


class Images(Protocol):
    async def inspect(self, name: str) -> dict[str, Any]: ...


class Client(Protocol):
    """The engine client of a run: ``aiodocker.Docker``, or
    :class:`~caliban.platforms.local.quick.QuickDocker`."""

    @property
    def containers(self) -> Containers: ...

    @property
    def images(self) -> Images: ...

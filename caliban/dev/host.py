"""What a shell or notebook session needs from the session that opens it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from caliban.platforms.base import Context, Prepared

if TYPE_CHECKING:
    from caliban.adapters.build import BuiltImage
    from caliban.adapters.store import Store
    from caliban.core.dockerargs import RunOptions
    from caliban.core.dockerfile import ImageUser
    from caliban.options import ProjectOptions


class DevHost(Context, Protocol):
    """The platform context, plus building the project's image."""

    @property
    def user(self) -> ImageUser: ...

    async def store(self) -> Store: ...

    async def prepare(
        self,
        project_opts: ProjectOptions,
        *,
        gpu_spec: object | None = None,
        tpu_spec: object | None = None,
    ) -> Prepared: ...

    async def build_prepared(self, prepared: Prepared, *, no_cache: bool = False) -> BuiltImage: ...

    async def container_options(
        self, args: Sequence[str], fragment: Mapping[str, Any] | None
    ) -> RunOptions: ...

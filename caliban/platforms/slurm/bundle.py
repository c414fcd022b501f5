"""OCI bundles for ``--runtime oci``: the image's filesystem, exported once per image.

A bundle is ``<bundle_dir or slurm_dir>/bundles/<image id>/`` on the
cluster's shared filesystem: ``rootfs/`` (``docker create`` + ``docker
export`` of the image, untarred), ``config.json`` (:mod:`.oci`) and
``caliban.json`` (the image's process, for the batch scripts). It is built
in a folder of its own next to it and moved into place with one ``mv -T``,
so a crash or a second submit of the same image at the same time never leaves
or uses half a bundle: a bundle that exists is complete, and the loser of a
race removes its copy and uses the winner's. With ``--host`` the export is
streamed over ssh into ``tar`` on the login node.

The image id (the digest of the image's config, which names its layers) keys
the folder: the same image is exported once, whatever its tag.
"""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio

from caliban.errors import BackendError, ValidationError
from caliban.platforms.slurm import oci
from caliban.platforms.slurm.commands import Slurm

BUNDLES = "bundles"
PROCESS = "caliban.json"


@dataclass(frozen=True)
class Bundle:
    path: str
    process: oci.ImageProcess
    exported: bool  # False: an existing bundle was used


def folder_for(root: str, image_id: str) -> str:
    return f"{root.rstrip('/') or '/'}/{BUNDLES}/{image_id.replace(':', '-')}"


async def check_writable(slurm: Slurm, root: str) -> None:
    """Refuse a bundle folder that cannot be written, before anything is recorded."""
    script = 'mkdir -p "$1" 2>/dev/null && [ -d "$1" ] && [ -w "$1" ]'
    result = await slurm.run_raw(["sh", "-c", script, "sh", f"{root.rstrip('/')}/{BUNDLES}"])
    if result.returncode == 255 and slurm.cluster.host is not None:
        raise slurm.failure(["sh"], result, "checking the bundle folder")
    if result.returncode != 0:
        raise ValidationError(
            f"the bundle folder {root}/{BUNDLES} is not writable {slurm.where}",
            hint="pass --bundle_dir DIR (or slurm.bundle_dir in .calibanconfig.json) "
            "on a shared filesystem you can write",
        )


async def _read_json(slurm: Slurm, path: str) -> dict[str, object] | None:
    got = await slurm.read(path)
    if got is None:
        return None
    try:
        data = json.loads(got.decode())
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def _put(slurm: Slurm, path: str, text: str) -> None:
    """Write ``path`` whole or not at all (readers see the old file or the new)."""
    script = 'cat >"$1.tmp.$2" && mv -f "$1.tmp.$2" "$1"'
    await slurm.run(
        ["sh", "-c", script, "sh", path, secrets.token_hex(4)],
        input=text.encode(),
        what=f"writing {path}",
    )


async def _mounting(slurm: Slurm, path: str, shared: str) -> None:
    """Make an existing bundle's config.json mount ``shared`` too (another
    Slurm folder using the same bundle folder): the new file has every mount
    of the old, so tasks of earlier sweeps still start."""
    config = await _read_json(slurm, f"{path}/{oci.CONFIG}")
    if config is None:
        raise BackendError(
            f"the bundle {path} has no readable {oci.CONFIG}; remove it to export again"
        )
    have = oci.shared_of(config)
    if shared in have:
        return
    process = await _read_json(slurm, f"{path}/{PROCESS}")
    if process is None:
        raise BackendError(
            f"the bundle {path} has no readable {PROCESS}; remove it to export again"
        )
    new = oci.config_json(oci.ImageProcess.from_json(process), [*have, shared])
    await _put(slurm, f"{path}/{oci.CONFIG}", oci.dumps(new))


async def ensure(
    slurm: Slurm,
    *,
    image: str,
    image_id: str,
    image_config: Mapping[str, object],
    root: str,
    shared: str,
    notify: Callable[[str], None] = lambda _: None,
    docker: str = "docker",
) -> Bundle:
    """The bundle of ``image`` under ``root``, exported if it is not there yet;
    its config.json mounts the Slurm folder ``shared``."""
    path = folder_for(root, image_id)
    process = await _read_json(slurm, f"{path}/{PROCESS}")
    if process is not None:
        await _mounting(slurm, path, shared)
        return Bundle(path, oci.ImageProcess.from_json(process), exported=False)
    where = f"{slurm.cluster.host}:{path}" if slurm.cluster.host else path
    notify(f"exporting the image to the OCI bundle {where}")
    tmp = f"{path}.tmp-{secrets.token_hex(6)}"
    try:
        made = await _export(slurm, image, image_config, tmp, shared, docker)
        moved = await slurm.run_raw(["mv", "-T", tmp, path])
        if moved.returncode == 0:
            return Bundle(path, made, exported=True)
        # Someone else's export of the same image won the race: use theirs.
        theirs = await _read_json(slurm, f"{path}/{PROCESS}")
        if theirs is None:
            raise BackendError(
                f"cannot move the bundle into {where}: "
                + moved.stderr.decode(errors="replace").strip()[-300:]
            )
        await _mounting(slurm, path, shared)
        return Bundle(path, oci.ImageProcess.from_json(theirs), exported=False)
    finally:
        with anyio.CancelScope(shield=True):
            await slurm.run_raw(["rm", "-rf", tmp])


async def _export(
    slurm: Slurm,
    image: str,
    image_config: Mapping[str, object],
    tmp: str,
    shared: str,
    docker: str,
) -> oci.ImageProcess:
    rootfs = f"{tmp}/{oci.ROOTFS}"
    await slurm.run(["mkdir", "-p", rootfs], what=f"making {rootfs}")
    created = await anyio.run_process([docker, "create", image, "/bin/true"], check=False)
    if created.returncode != 0:
        raise BackendError(
            f"docker create {image} failed: {created.stderr.decode(errors='replace').strip()}"
        )
    cid = created.stdout.decode().strip()
    try:
        untar = shlex.join(slurm.cluster.argv(["tar", "-C", rootfs, "-xf", "-"]))
        pipeline = f"{shlex.quote(docker)} export {shlex.quote(cid)} | {untar}"
        result = await anyio.run_process(["sh", "-c", pipeline], check=False)
        if result.returncode != 0:
            raise BackendError(
                f"exporting {image} to {tmp} failed: "
                + result.stderr.decode(errors="replace").strip()[-300:]
            )
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.run_process([docker, "rm", "-f", cid], check=False)
    passwd = await slurm.read(f"{rootfs}/etc/passwd")
    group = await slurm.read(f"{rootfs}/etc/group")
    process = oci.image_process(
        image_config,
        (passwd or b"").decode(errors="replace"),
        (group or b"").decode(errors="replace"),
    )
    await _put(slurm, f"{rootfs}/{oci.MARKER}", image + "\n")
    await _put(slurm, f"{tmp}/{oci.CONFIG}", oci.dumps(oci.config_json(process, [shared])))
    await _put(slurm, f"{tmp}/{PROCESS}", json.dumps(process.to_json(), indent=2) + "\n")
    return process

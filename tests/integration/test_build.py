"""Image builds against the real engine: content-hash skip, .dockerignore, users, failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from caliban import events as ev
from caliban.adapters.docker import BUILT_WITH_PREFIX
from caliban.errors import BuildError
from caliban.options import ProjectOptions
from caliban.session import Session
from tests.conftest import RUN_ID, TEST_LABEL, MakeProject, docker_cli

pytestmark = [pytest.mark.docker]


def _collect(session: Session) -> list[ev.Event]:
    seen: list[ev.Event] = []
    session.sink = seen.append
    return seen


def _in_image(tag: str, *command: str) -> str:
    return docker_cli("run", "--rm", "--entrypoint", command[0], tag, *command[1:])


async def test_second_build_is_skipped_and_edits_change_the_tag(
    session: Session, make_project: MakeProject
) -> None:
    # Content unique to this test run: an image another run left behind with the same
    # content hash would otherwise make the "first" build a skipped one.
    folder = make_project({"run_marker.txt": RUN_ID})
    opts = ProjectOptions(folder=folder, entry="job.py")
    seen = _collect(session)
    first = await session.build(opts)
    assert not first.skipped
    assert first.tag.split(":")[1] == first.digest[:16]
    assert any(isinstance(e, ev.BuildLog) and "Step" in e.line for e in seen)

    seen.clear()
    again = await session.build(opts)
    assert again.skipped and again.tag == first.tag and again.image_id == first.image_id
    assert [type(e) for e in seen if isinstance(e, ev.BuildSkipped | ev.BuildStarted)] == [
        ev.BuildSkipped
    ]

    (folder / "job.py").write_text((folder / "job.py").read_text() + "\n# edited\n")
    edited = await session.build(opts)
    assert not edited.skipped and edited.tag != first.tag

    forced = await session.build(ProjectOptions(folder=folder, entry="job.py", no_cache=True))
    assert not forced.skipped and forced.tag == edited.tag


async def test_dockerignore_and_generated_files_stay_out_of_the_image(
    session: Session, make_project: MakeProject
) -> None:
    folder = make_project(
        {
            ".dockerignore": "data/\n*.secret\n!keep.secret\n",
            "data/big.bin": "x" * 1000,
            "token.secret": "do not ship",
            "keep.secret": "ship me",
            "pkg/__init__.py": "",
            "pkg/mod.py": "print('module ran')\n",
        }
    )
    built = await session.build(ProjectOptions(folder=folder, entry="job.py"))
    listing = _in_image(built.tag, "find", "/usr/app", "-not", "-path", "*/__pycache__*")
    files = {line.removeprefix("/usr/app/") for line in listing.split()}
    assert {"job.py", "keep.secret", "pkg/mod.py", ".calibanconfig.json"} <= files
    assert "token.secret" not in files
    assert not any(f.startswith("data") for f in files)
    assert "Dockerfile.caliban" not in files and ".dockerignore" not in files

    # An ignored file does not change the content hash either.
    (folder / "data" / "big.bin").write_text("changed")
    again = await session.build(ProjectOptions(folder=folder, entry="job.py"))
    assert again.skipped and again.tag == built.tag


async def test_module_entrypoint_and_extra_dirs(
    session: Session, make_project: MakeProject
) -> None:
    folder = make_project(
        {
            "trainer/__init__.py": "",
            "trainer/train.py": "import sys\nprint('trainer args', sys.argv[1:])\n",
            "configs/a.yaml": "a: 1\n",
            "unrelated/notes.txt": "not copied",
        }
    )
    built = await session.build(
        ProjectOptions(folder=folder, entry="trainer.train", extra_dirs=("configs",))
    )
    out = docker_cli("run", "--rm", built.tag, "--x", "1")
    assert "trainer args ['--x', '1']" in out
    listing = _in_image(built.tag, "find", "/usr/app", "-type", "f")
    assert "/usr/app/configs/a.yaml" in listing
    assert "notes.txt" not in listing  # only the package and --dir folders


async def test_user_matches_the_host(session: Session, make_project: MakeProject) -> None:
    built = await session.build(ProjectOptions(folder=make_project(), entry="job.py"))
    ids = _in_image(built.tag, "sh", "-c", "echo $(id -u):$(id -g):$HOME").strip()
    home = "/root" if os.getuid() == 0 else f"/home/{session.user.name}"
    assert ids == f"{os.getuid()}:{os.getgid()}:{home}"


async def test_non_root_user_is_created(
    env: dict[str, str], home: Path, make_project: MakeProject
) -> None:
    from caliban.core.dockerfile import ImageUser

    async with Session(home=home, environ=env, user=ImageUser(4321, 4322, "alice")) as s:
        built = await s.build(ProjectOptions(folder=make_project(), entry="job.py"))
    out = _in_image(built.tag, "sh", "-c", "id -u; id -g; echo $HOME; stat -c %u /usr/app/job.py")
    assert out.split() == ["4321", "4322", "/home/alice", "4321"]


async def test_failing_step_is_one_clear_error(session: Session, make_project: MakeProject) -> None:
    folder = make_project({"setup.py": "raise SystemExit('setup exploded')\n"})
    with pytest.raises(BuildError) as info:
        await session.build(ProjectOptions(folder=folder, entry="job.py"))
    message = str(info.value)
    assert "\n" not in message.strip() or message.count("\n") <= 2
    assert "image build failed at step" in message
    assert "pip install" in message and "non-zero code" in message
    assert info.value.step is not None


async def test_missing_base_image_says_what_to_do(
    env: dict[str, str], home: Path, make_project: MakeProject
) -> None:
    env = {**env, "CALIBAN_BASE_IMAGE": "caliban-test-no-such-image:never"}
    async with Session(home=home, environ=env) as s:
        with pytest.raises(BuildError) as info:
            await s.build(ProjectOptions(folder=make_project(), entry="job.py"))
    assert "caliban-test-no-such-image:never" in str(info.value)
    assert "CALIBAN_BASE_IMAGE" in str(info.value)


async def test_a_sessions_labels_on_an_image_do_not_reach_containers_of_later_runs(
    env: dict[str, str], home: Path, make_project: MakeProject
) -> None:
    """Docker copies image labels onto containers, and the image is shared by content:
    a later run without the label must not get it (cleanup by label would hit it)."""
    folder = make_project({"run_marker.txt": RUN_ID + "-labels"})
    labels = {TEST_LABEL: RUN_ID, "team": "vision"}
    async with Session(home=home, environ=env, labels=labels) as labelled:
        built = await labelled.build(ProjectOptions(folder=folder, entry="job.py"))
    image = json.loads(docker_cli("image", "inspect", built.tag))[0]["Config"]["Labels"]
    assert image[f"{BUILT_WITH_PREFIX}team"] == "vision"
    assert "team" not in image and TEST_LABEL not in image
    # What Docker itself gives a container made from it, with only this run's label.
    name = f"caliban-labels-{RUN_ID}"
    docker_cli("create", "--name", name, "--label", f"{TEST_LABEL}={RUN_ID}", built.tag)
    try:
        info = json.loads(docker_cli("container", "inspect", name))[0]["Config"]["Labels"]
    finally:
        docker_cli("rm", "-f", name)
    assert "team" not in info and info[TEST_LABEL] == RUN_ID

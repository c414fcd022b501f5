"""The OCI runtime path of `caliban slurm submit`: the bundle's config.json from the
image's config, the batch script that runs inside it, and where the runtime is chosen."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from caliban.core import config as calibanconfig
from caliban.core import settings
from caliban.errors import CalibanConfigError, ValidationError
from caliban.platforms.slurm import oci, spec
from caliban.platforms.slurm.spec import Batch, Resources, Task

IMAGE_CONFIG: dict[str, object] = {
    "User": "app:staff",
    "Env": ["PATH=/opt/venv/bin:/usr/bin:/bin", "LANG=C.UTF-8", "HOME=/home/app"],
    "Entrypoint": ["python3", "job.py"],
    "Cmd": ["--default"],
    "WorkingDir": "/usr/app",
}
PASSWD = "root:x:0:0:root:/root:/bin/bash\napp:x:1001:1002::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:\n"


def test_the_image_process_is_what_docker_run_would_start() -> None:
    p = oci.image_process(IMAGE_CONFIG, PASSWD, GROUP)
    assert p.env == tuple(IMAGE_CONFIG["Env"])  # type: ignore[arg-type]
    assert p.entrypoint == ("python3", "job.py") and p.cmd == ("--default",)
    assert p.cwd == "/usr/app"
    assert (p.uid, p.gid) == (1001, 50)
    assert oci.ImageProcess.from_json(json.loads(json.dumps(p.to_json()))) == p


def test_defaults_docker_adds_path_home_root_and_slash() -> None:
    p = oci.image_process({"Cmd": ["/bin/sh"]})
    assert p.env[0].startswith("PATH=/usr/local/sbin:") and "HOME=/root" in p.env
    assert (p.uid, p.gid, p.cwd, p.entrypoint) == (0, 0, "/", ())


@pytest.mark.parametrize(
    ("user", "ids"),
    [
        ("", (0, 0)),
        ("root", (0, 0)),
        ("1001", (1001, 1002)),
        ("7:8", (7, 8)),
        ("app", (1001, 1002)),
    ],
)
def test_users_by_name_or_number(user: str, ids: tuple[int, int]) -> None:
    assert oci.resolve_user(user, PASSWD, GROUP) == ids


def test_a_user_the_image_does_not_have_is_refused() -> None:
    with pytest.raises(ValidationError, match="'nobody'"):
        oci.resolve_user("nobody", PASSWD, GROUP)
    with pytest.raises(ValidationError, match="group 'wheel'"):
        oci.resolve_user("app:wheel", PASSWD, GROUP)


def test_config_json_shares_a_read_only_root_and_mounts_the_slurm_folder() -> None:
    p = oci.image_process(IMAGE_CONFIG, PASSWD, GROUP)
    c = oci.config_json(p, ["/shared/slurm"])
    process = c["process"]
    assert isinstance(process, dict)
    assert process["env"] == list(p.env) and process["cwd"] == "/usr/app"
    assert process["user"] == {"uid": 1001, "gid": 50}
    # Slurm 22.05 always runs BUNDLE/rootfs; the tasks of every sweep share it.
    assert c["root"] == {"path": "rootfs", "readonly": True}
    mounts = {m["destination"]: m for m in c["mounts"]}  # type: ignore[attr-defined]
    assert mounts["/tmp"]["type"] == "tmpfs"
    assert mounts["/shared/slurm"]["source"] == "/shared/slurm"
    assert "ro" in mounts["/shared/slurm"]["options"]
    # The host's network: no network namespace.
    namespaces = {n["type"] for n in c["linux"]["namespaces"]}  # type: ignore[index]
    assert "network" not in namespaces and "pid" in namespaces
    assert oci.shared_of(json.loads(oci.dumps(c))) == ["/shared/slurm"]
    both = oci.config_json(p, ["/b", "/a", "/b"])
    assert oci.shared_of(both) == ["/a", "/b"]


def _batch(n: int = 2) -> Batch:
    return Batch(
        batch_id="B1",
        workdir="/shared/slurm/g/B1",
        tasks=tuple(Task(f"job{i}", ("--i", str(i))) for i in range(n)),
        store_id="store123",
        xgroup="g",
        image="img:tag",
        labels={"caliban.test": "run1"},
    )


def test_batch_script_runs_in_the_bundle_with_the_image_environment_only() -> None:
    p = oci.image_process(IMAGE_CONFIG, PASSWD, GROUP)
    script = oci.batch_script(_batch(), Resources(partition="short"), p, "/b/bundles/sha256-x")
    assert script.startswith("#!/bin/sh\n")
    assert "#SBATCH --container=/b/bundles/sha256-x" in script
    assert "#SBATCH --partition=short" in script and "#SBATCH --array=0-1" in script
    assert "docker" not in script
    assert "env -i 'PATH=/opt/venv/bin:/usr/bin:/bin' 'LANG=C.UTF-8' 'HOME=/home/app'" in script
    assert "set -- 'python3' 'job.py' \"$@\"" in script
    assert "set -- '--default'" in script  # the image's Cmd when a task has no arguments
    assert "</shared/slurm/g/B1/args" in script.replace("'", "")
    dash = shutil.which("dash") or shutil.which("sh")
    assert dash is not None
    subprocess.run([dash, "-n", "-c", script], check=True)


def test_argument_lines_read_the_same_in_a_plain_posix_sh() -> None:
    # The OCI script runs in the image's /bin/sh (dash on Debian): no $'...' there.
    argv = ("it's", "a b", "$HOME", "`x`", '"q"', "back\\slash", "", "ünï")
    line = spec.args_line(Task("J", argv))
    assert "$'" not in line
    dash = shutil.which("dash")
    assert dash is not None, "Debian's /bin/sh (dash) is needed for this test"
    out = subprocess.run(
        [dash, "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "_", line],
        capture_output=True,
        check=True,
    ).stdout
    assert out.decode().split("\0")[:-1] == ["J", *argv]


# -- where the runtime comes from -------------------------------------------------------


def test_calibanconfig_slurm_key() -> None:
    cfg = calibanconfig.from_mapping({"slurm": {"runtime": "oci", "bundle_dir": "/scratch/b"}})
    assert cfg.slurm == calibanconfig.SlurmConfig("oci", "/scratch/b")
    assert calibanconfig.from_mapping({}).slurm == calibanconfig.SlurmConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"slurm": {"runtime": "podman"}}, "'slurm.runtime' must be one of docker, oci"),
        ({"slurm": {"runtme": "oci"}}, "unknown key 'runtme' in 'slurm'; did you mean 'runtime'?"),
        ({"slurm": "oci"}, "key 'slurm' must be an object"),
        ({"slurm": {"bundle_dir": 3}}, "'slurm.bundle_dir' must be a string"),
        ({"slurm": {"bundle_dir": "a\nb"}}, "'slurm.bundle_dir' must be one line"),
    ],
)
def test_bad_slurm_keys_are_one_line_errors(data: dict[str, object], message: str) -> None:
    with pytest.raises(CalibanConfigError) as got:
        calibanconfig.from_mapping(data)
    assert message in str(got.value) and "\n" not in str(got.value)


def _runtime(flag: str | None, project: dict[str, object] | None) -> tuple[object, str]:
    cfg = calibanconfig.from_mapping(project or {})
    got = settings.resolve_one(
        settings.BY_NAME["slurm.runtime"],
        flags={"slurm.runtime": flag},
        environ={},
        project=settings.project_values(cfg),
    )
    return got.value, got.source


def test_flag_beats_config_beats_default() -> None:
    oci_cfg: dict[str, object] = {"slurm": {"runtime": "oci"}}
    assert _runtime(None, None) == ("docker", "default")
    assert _runtime(None, oci_cfg) == ("oci", "project file")
    assert _runtime("docker", oci_cfg) == ("docker", "flag")
    assert _runtime("oci", None) == ("oci", "flag")
    cfg = calibanconfig.from_mapping({"slurm": {"bundle_dir": "/b"}})
    assert settings.project_values(cfg)["slurm.bundle_dir"] == "/b"

"""Where each setting comes from: the one place the precedence is written.

flag > environment > project file (``.calibanconfig.json``) > user file
(:mod:`caliban.core.userconfig`) > default. :func:`resolve` is pure: it is given
the flags, the environment and both parsed files, and returns every value with
its source, which is what ``caliban config`` prints and what the commands use.

A setting is one :class:`SettingDef` in :data:`SETTINGS`; a new one (say a
``build_env`` section of the project file) needs an entry here, a validator in
the user file's table and, if the project file holds it, a line in
:func:`project_values`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from caliban.core import baseimage
from caliban.core.config import CONFIG_FILE, CalibanConfig
from caliban.core.userconfig import UserConfig
from caliban.errors import ValidationError
from caliban.spec import JobMode

DEFAULT_REGION = "us-central1"
DEFAULT_KUBECONFIG = "~/.kube/config"
DEFAULT_HOME = "~/.caliban"
LABELS_ENV = "CALIBAN_LABELS"


def parse_labels(name: str, text: str) -> dict[str, str]:
    """``CALIBAN_LABELS="team=vision,cost=q3"``."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if part.strip():
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ValidationError(f"{name}: {part!r} is not key=value")
            out[key.strip()] = value.strip()
    return out


def _image_for(mode: JobMode) -> Callable[[str, str], object]:
    return lambda _name, text: text.replace("{}", mode.value)


@dataclass(frozen=True)
class SettingDef:
    """One setting and every place it may be given."""

    name: str
    help: str
    flag: str | None = None
    env: tuple[str, ...] = ()
    project: bool = False
    user: bool = True
    default: object = None
    # What "no value" means, for settings whose default is decided later
    # (the credentials' own project, say).
    default_text: str | None = None
    parse_env: Callable[[str, str], object] | None = None


@dataclass(frozen=True)
class Resolved:
    """A setting's effective value and where it came from."""

    name: str
    value: object
    source: str
    where: str | None = None  # the flag, variable or file path

    def describe(self) -> str:
        return f"{self.source} {self.where}" if self.where else self.source


SETTINGS: tuple[SettingDef, ...] = (
    SettingDef(
        "base_image.cpu",
        "image CPU builds start FROM",
        env=(baseimage.ENV_VAR,),
        project=True,
        default=baseimage.DEFAULTS[JobMode.CPU],
        parse_env=_image_for(JobMode.CPU),
    ),
    SettingDef(
        "base_image.gpu",
        "image GPU builds start FROM",
        env=(baseimage.ENV_VAR,),
        project=True,
        default=baseimage.DEFAULTS[JobMode.GPU],
        parse_env=_image_for(JobMode.GPU),
    ),
    SettingDef(
        "default_mode",
        "mode when neither --nogpu nor a spec decides",
        flag="--nogpu",
        project=True,
        default=JobMode.GPU.value,
    ),
    SettingDef(
        "image_registry",
        "where images are pushed for Kubernetes (HOST/PATH)",
        flag="--image_registry",
        env=("CALIBAN_IMAGE_REGISTRY",),
        default_text="Artifact Registry of the project (GKE, Vertex)",
    ),
    SettingDef(
        "caliban_home",
        "history (SQLite) and job logs",
        env=("CALIBAN_HOME",),
        default=DEFAULT_HOME,
    ),
    SettingDef(
        "labels",
        "extra labels on everything caliban creates",
        env=(LABELS_ENV,),
        default={},
        parse_env=parse_labels,
    ),
    SettingDef(
        "gcloud.project_id",
        "Google Cloud project",
        flag="--project_id",
        env=("PROJECT_ID",),
        project=True,
        default_text="the credentials' project",
    ),
    SettingDef(
        "gcloud.region",
        "Vertex AI region",
        flag="--region",
        env=("REGION",),
        default=DEFAULT_REGION,
    ),
    SettingDef(
        "gcloud.quota_project",
        "project billed for Google API calls",
        flag="--quota_project",
        env=("GOOGLE_CLOUD_QUOTA_PROJECT",),
        default_text="the credentials' quota_project_id",
    ),
    SettingDef(
        "gcloud.cloud_key",
        "service account key file (the path; never its content)",
        flag="--cloud_key",
        env=("GOOGLE_APPLICATION_CREDENTIALS",),
        project=True,
        default_text="application default credentials",
    ),
    SettingDef(
        "kubeconfig",
        "kubeconfig file(s) for `caliban cluster`",
        flag="--kubeconfig",
        env=("KUBECONFIG",),
        default=DEFAULT_KUBECONFIG,
    ),
    SettingDef(
        "slurm.runtime",
        "how Slurm tasks run the image: docker (docker run) or oci (--container bundle)",
        flag="--runtime",
        project=True,
        user=False,
        default="docker",
    ),
    SettingDef(
        "slurm.bundle_dir",
        "where OCI bundles are exported, once per image, for `--runtime oci`",
        flag="--bundle_dir",
        project=True,
        user=False,
        default_text="the Slurm folder (--slurm_dir)",
    ),
    SettingDef(
        "kube_context",
        "kubeconfig context",
        flag="--context",
        default_text="the kubeconfig's current-context",
    ),
)

BY_NAME: dict[str, SettingDef] = {s.name: s for s in SETTINGS}


def project_values(config: CalibanConfig) -> dict[str, object]:
    """The settings a ``.calibanconfig.json`` holds, by dotted name (unset ones left out)."""
    values: dict[str, object] = {
        "base_image.cpu": config.base_image.cpu,
        "base_image.gpu": config.base_image.gpu,
        "default_mode": config.default_mode.value if config.default_mode else None,
        "gcloud.project_id": config.gcloud.project_id,
        "gcloud.cloud_key": config.gcloud.cloud_key,
        "slurm.runtime": config.slurm.runtime,
        "slurm.bundle_dir": config.slurm.bundle_dir,
    }
    return {k: v for k, v in values.items() if v is not None}


def _given(value: object) -> bool:
    if value is None:
        return False
    return not (isinstance(value, str) and not value.strip())


def resolve_one(
    setting: SettingDef,
    *,
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    project: Mapping[str, object] | None = None,
    project_path: str | None = None,
    user: UserConfig | None = None,
) -> Resolved:
    """The effective value of one setting (see the module's precedence)."""
    flag = (flags or {}).get(setting.name)
    if _given(flag):
        return Resolved(setting.name, flag, "flag", setting.flag)
    for var in setting.env:
        text = (environ or {}).get(var, "").strip()
        if text:
            value = setting.parse_env(var, text) if setting.parse_env else text
            return Resolved(setting.name, value, "env", var)
    if setting.project and project is not None and _given(project.get(setting.name)):
        return Resolved(setting.name, project[setting.name], "project file", project_path)
    if setting.user and user is not None and _given(user.values.get(setting.name)):
        return Resolved(setting.name, user.values[setting.name], "user file", user.path)
    return Resolved(setting.name, setting.default, "default")


def resolve(
    *,
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    project: Mapping[str, object] | None = None,
    project_path: str | None = None,
    user: UserConfig | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, Resolved]:
    """Every setting (or those ``names``), in the order of :data:`SETTINGS`."""
    wanted = SETTINGS if names is None else tuple(BY_NAME[n] for n in names)
    return {
        s.name: resolve_one(
            s,
            flags=flags,
            environ=environ,
            project=project,
            project_path=project_path,
            user=user,
        )
        for s in wanted
    }


def project_path_for(folder: str) -> str:
    """How a project's file is named in a source."""
    return f"{folder.rstrip('/')}/{CONFIG_FILE}"


def key_file(
    flag: str | None,
    environ: Mapping[str, str],
    *,
    user: UserConfig | None = None,
    project_key: str | None = None,
    project_folder: Path | None = None,
) -> str | None:
    """The service-account key file as an absolute path, for every command that
    needs one: ``--cloud_key``, else ``$GOOGLE_APPLICATION_CREDENTIALS``, else the
    project's ``gcloud.cloud_key`` (relative to the project folder), else the user
    file's (already anchored at that file). Absolute, because it is recorded with
    the jobs and ``caliban status`` may run from another folder."""
    key = flag or environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
    base = Path.cwd()
    if key is None and project_key:
        key, base = project_key, project_folder or base
    if key is None and user is not None:
        user_key = user.values.get("gcloud.cloud_key")
        key = str(user_key) if user_key else None
    if key is None:
        return None
    path = Path(key).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())

"""What the library API is asked to do: plain, immutable request objects.

The CLI builds these from flags; a Python program builds them directly::

    async with caliban.Session() as s:
        result = await s.run(caliban.RunRequest(
            project=caliban.ProjectOptions(
                folder="tutorials/basic", entry="train.py", use_gpu=False
            ),
            experiments={"learning_rate": [0.01, 0.1]},
        ))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caliban.core.dockerfile import Jupyter
from caliban.core.experiment import DEFAULT_MAX_SWEEP


@dataclass(frozen=True)
class ProjectOptions:
    """Which code to package, and how.

    ``use_gpu`` None means "not said": ``default_mode`` of .calibanconfig.json
    decides, and GPU mode when that is unset too (the original's default).
    ``image_id`` skips the build and uses that image as is.
    """

    folder: Path = field(default_factory=lambda: Path("."))
    entry: str | None = None
    use_gpu: bool | None = None
    extra_dirs: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()
    no_cache: bool = False
    image_id: str | None = None
    jupyter: Jupyter | None = None
    shell: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))


@dataclass(frozen=True)
class RunRequest:
    """A local run: one job, or a sweep when ``experiments`` is given.

    ``experiments`` is a validated experiment config (see
    :func:`caliban.core.experiment.validate`); ``script_args`` go before each
    experiment's flags. ``max_parallel`` None means one job per free GPU slot
    in GPU mode and one per CPU core otherwise. A config that expands to more
    than ``max_sweep`` jobs is refused before anything happens (also for the
    cloud and cluster requests).
    """

    project: ProjectOptions
    experiments: object | None = None
    script_args: tuple[str, ...] = ()
    xgroup: str | None = None
    max_parallel: int | None = None
    gpus_per_job: int | None = None
    gpu_ids: tuple[str, ...] | None = None
    docker_run_args: tuple[str, ...] = ()
    # --docker_create_json: a create-body fragment, checked against the daemon's API.
    docker_create_json: Mapping[str, Any] | None = None
    dry_run: bool = False
    max_sweep: int = DEFAULT_MAX_SWEEP
    # Cores each job holds exclusively (a cpuset); None: jobs share all cores.
    cpus_per_job: int | None = None


@dataclass(frozen=True)
class ShellRequest:
    """``caliban shell``: an interactive shell in the project's image.

    ``shell`` is ``"bash"`` or ``"zsh"``; None picks zsh when ``$SHELL`` names
    zsh and the home folder is mounted, bash otherwise. ``bare`` leaves the
    home folder unmounted. ``image_id`` on ``project`` skips the build.
    """

    project: ProjectOptions = field(default_factory=ProjectOptions)
    shell: str | None = None
    bare: bool = False
    gpu_ids: tuple[str, ...] | None = None
    docker_run_args: tuple[str, ...] = ()
    # --docker_create_json: a create-body fragment, checked against the daemon's API.
    docker_create_json: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class NotebookRequest:
    """``caliban notebook``: a Jupyter server in the project's image.

    ``port`` None means the first free port from 8888. ``jupyter_version``
    pins ``notebook`` (or ``jupyterlab`` with ``lab``). ``start_timeout`` is
    how long the server may take to answer before caliban gives up.
    """

    project: ProjectOptions = field(default_factory=ProjectOptions)
    port: int | None = None
    lab: bool = False
    jupyter_version: str | None = None
    bare: bool = False
    gpu_ids: tuple[str, ...] | None = None
    docker_run_args: tuple[str, ...] = ()
    # --docker_create_json: a create-body fragment, checked against the daemon's API.
    docker_create_json: Mapping[str, Any] | None = None
    start_timeout: float = 120.0


@dataclass(frozen=True)
class CloudRequest:
    """``caliban cloud``: one Vertex AI custom job per experiment.

    ``regions``: jobs are spread over them round-robin so each region's quota
    is used. ``image_tag`` skips build and push and runs that image.
    ``rate_limit`` is job creations per minute per region (Vertex's default
    quota is 60); ``max_inflight`` bounds concurrent requests. ``endpoint``
    replaces ``https://REGION-aiplatform.googleapis.com`` (private endpoints,
    tests). ``image_registry`` replaces Artifact Registry as the push target.
    """

    project: ProjectOptions
    experiments: object | None = None
    script_args: tuple[str, ...] = ()
    xgroup: str | None = None
    project_id: str | None = None
    regions: tuple[str, ...] = ()
    machine_type: str | None = None
    gpu_spec: str | None = None
    tpu_spec: str | None = None
    force: bool = False
    name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    image_tag: str | None = None
    cloud_key: str | None = None
    dry_run: bool = False
    rate_limit: float = 60.0
    max_inflight: int = 16
    spot: bool = False
    service_account: str | None = None
    timeout_s: int | None = None
    endpoint: str | None = None
    artifact_repo: str = "caliban"
    # Placement (caliban.platforms.vertex.scheduling checks them); durations as written.
    flex_start: bool = False
    max_wait: str | None = None
    reservation: str | None = None
    persistent_resource: str | None = None
    timeout: str | None = None
    no_platform_retries: bool = False
    #: A capacity ladder, ``reservation:NAME,flex:2h,spot,standard`` (docs/capacity.md).
    capacity: str | None = None
    queue_timeout: str | None = None
    image_registry: str | None = None
    max_sweep: int = DEFAULT_MAX_SWEEP


@dataclass(frozen=True)
class ClusterOptions:
    """Which Kubernetes cluster (``caliban cluster ...``).

    A GKE cluster through the GKE API (``cluster_name``, ``zone`` - a zone or a
    region -, ``project_id``, ``cloud_key``), or any cluster through a kubeconfig
    (``kubeconfig``, ``context``). With neither ``kubeconfig`` nor ``context`` nor
    ``$KUBECONFIG`` (nor either in the user file), it is GKE, and the only cluster
    of the project when no name is given. ``namespace`` defaults to the context's, else ``default``.
    ``gke_endpoint`` replaces https://container.googleapis.com (also
    ``$CALIBAN_GKE_ENDPOINT``).
    """

    cluster_name: str | None = None
    zone: str | None = None
    project_id: str | None = None
    cloud_key: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    gke_endpoint: str | None = None


@dataclass(frozen=True)
class ClusterJobRequest:
    """``caliban cluster job submit``: one Kubernetes Job per experiment, or with
    ``indexed`` one Indexed Job for the whole sweep (``max_parallel`` pods at once).

    ``min_cpu`` is milli-CPU and ``min_mem`` MB per job. Jobs run on on-demand nodes
    unless ``spot`` (GKE Spot VMs) or ``preemptible`` (the legacy GKE label).
    ``cluster_type`` "gke" uses GKE's node labels for GPU type, TPU and spot;
    "generic" only asks for resources (default: "gke" for clusters reached through
    the GKE API, "generic" for kubeconfig contexts). ``export`` writes the manifests
    to a .yaml/.json file instead of submitting. ``rate_limit`` (creates per
    minute) is off by default: the API server's own throttling (429 with
    Retry-After) is honoured, and ``max_inflight`` bounds concurrent requests.
    """

    project: ProjectOptions
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    experiments: object | None = None
    script_args: tuple[str, ...] = ()
    xgroup: str | None = None
    name: str | None = None
    labels: tuple[tuple[str, str], ...] = ()
    image_tag: str | None = None
    gpu_spec: str | None = None
    tpu_spec: str | None = None
    min_cpu: int | None = None
    min_mem: int | None = None
    spot: bool = False
    preemptible: bool = False
    cluster_type: str | None = None
    node_selector: tuple[tuple[str, str], ...] = ()
    indexed: bool = False
    max_parallel: int | None = None
    backoff_limit: int = 0
    ttl_seconds: int | None = 7 * 24 * 3600
    export: str | None = None
    dry_run: bool = False
    force: bool = False
    max_inflight: int = 64
    rate_limit: float | None = None
    image_registry: str | None = None
    artifact_repo: str = "caliban"
    max_sweep: int = DEFAULT_MAX_SWEEP
    # Kueue: the LocalQueue that admits the Jobs, and a WorkloadPriorityClass.
    queue: str | None = None
    priority_class: str | None = None
    compute_class: str | None = None  # a GKE custom ComputeClass


@dataclass(frozen=True)
class ClusterCreateRequest:
    """``caliban cluster create``: a GKE cluster with node auto-provisioning, its
    accelerator limits taken from the project's quotas in the region."""

    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    release_channel: str = "REGULAR"
    single_zone: bool = False
    dry_run: bool = False
    timeout_s: float = 1800.0


@dataclass(frozen=True)
class SlurmRequest:
    """``caliban slurm submit``: one Slurm array job per sweep (``per_job``: one
    job per experiment, for sites that forbid arrays), each task running the
    sweep's image with ``docker run`` on its node, or (``runtime`` "oci") in an
    OCI bundle exported from the image, through Slurm's ``--container``.

    ``host`` (``user@login``) reaches the login node over ssh; None runs the
    Slurm commands here. ``slurm_dir`` is a folder on the cluster's shared
    filesystem for batch scripts, argument files and task logs (default:
    ``$CALIBAN_HOME/slurm`` here, ``~/.caliban/slurm`` on ``host``).
    ``gpus_per_job`` None: one GPU per task in GPU mode, none otherwise;
    ``gpu_flag`` "gres" asks with ``--gres=gpu:K``, "gpus" with ``--gpus=K``.
    ``max_parallel`` throttles the array (``%N``). ``image_tag`` runs that image
    instead of building one.
    """

    project: ProjectOptions
    experiments: object | None = None
    script_args: tuple[str, ...] = ()
    xgroup: str | None = None
    partition: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_job: int | None = None
    gpus_per_job: int | None = None
    gpu_flag: str = "gres"
    max_parallel: int | None = None
    account: str | None = None
    qos: str | None = None
    sbatch_args: tuple[str, ...] = ()
    docker_run_args: tuple[str, ...] = ()
    host: str | None = None
    ssh_options: tuple[str, ...] = ()
    slurm_dir: str | None = None
    per_job: bool = False
    image_tag: str | None = None
    dry_run: bool = False
    max_sweep: int = DEFAULT_MAX_SWEEP
    # None: ``slurm.runtime``/``slurm.bundle_dir`` of .calibanconfig.json, else
    # "docker" and the Slurm folder.
    runtime: str | None = None
    bundle_dir: str | None = None

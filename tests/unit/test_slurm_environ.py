"""What of caliban's environment the Slurm commands, and so the jobs sbatch makes, see."""

from __future__ import annotations

from caliban.platforms.slurm.commands import Cluster, Slurm, command_environ

_USER_ENV = {
    "PATH": "/opt/slurm/bin:/usr/bin:/bin",
    "HOME": "/home/alice",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "SLURM_CONF": "/etc/slurm/slurm.conf",
    "SBATCH_PARTITION": "gpu",
    "SQUEUE_FORMAT": "%i",
    "DOCKER_HOST": "unix:///run/user/1000/docker.sock",
    "SSH_AUTH_SOCK": "/tmp/ssh-agent.sock",
    "LD_LIBRARY_PATH": "/opt/slurm/lib",
    # What must not follow the job onto the cluster:
    "WANDB_API_KEY": "0123456789abcdef",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCY",
    "GITHUB_TOKEN": "ghp_notarealtoken",
    "GOOGLE_APPLICATION_CREDENTIALS": "/home/alice/key.json",
    "HTTPS_PROXY": "http://alice:pw@proxy:3128",
    "SLURM_JWT": "eyJhbGciOi.jwt.token",
    "PYTHONPATH": "/home/alice/src",
}


def test_the_commands_keep_their_settings_paths_and_locale_only() -> None:
    kept = command_environ(_USER_ENV)
    assert kept == {
        name: _USER_ENV[name]
        for name in (
            "PATH",
            "HOME",
            "LANG",
            "LC_ALL",
            "SLURM_CONF",
            "SBATCH_PARTITION",
            "SQUEUE_FORMAT",
            "DOCKER_HOST",
            "SSH_AUTH_SOCK",
            "LD_LIBRARY_PATH",
        )
    }


async def test_a_local_command_runs_in_the_kept_environment() -> None:
    slurm = Slurm(Cluster(environ=_USER_ENV))
    out = await slurm.run(["sh", "-c", "env"])
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert seen["SLURM_CONF"] == "/etc/slurm/slurm.conf" and seen["HOME"] == "/home/alice"
    for secret in ("WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "SLURM_JWT"):
        assert secret not in seen
    assert "0123456789abcdef" not in out and "eyJhbGciOi" not in out

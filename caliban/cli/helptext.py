"""What every subcommand's ``--help`` says beyond its flags: a description and examples.

Kept in one table, applied to the finished parser, so that a command module
only declares flags and a new command shows up in tests/unit/test_cli_help.py
until it has its text here.
"""

from __future__ import annotations

import argparse

# command path -> (description, or "" to keep the one the command set; examples)
HELP: dict[str, tuple[str, tuple[str, ...]]] = {
    "build": (
        "Build the project's Docker image (the folder, its requirements.txt or setup.py, "
        "and the entry point) and print its tag. Nothing runs.",
        ("caliban build --nogpu trainer/train.py",),
    ),
    "run": (
        "Build the image and run the entry point in a local container: one job, or one "
        "per experiment of --experiment_config, at most --max_parallel at a time, each "
        "holding its own GPUs. Arguments after `--` go to the script.",
        (
            "caliban run --nogpu train.py -- --epochs 2",
            "caliban run --experiment_config sweep.json --max_parallel 2 train.py",
            "caliban run --experiment_config sweep.json --dry_run train.py",
        ),
    ),
    "status": (
        "List the jobs in caliban's history (newest experiment groups last), asking each "
        "platform for the state of unfinished ones.",
        (
            "caliban status",
            "caliban status --xgroup my-sweep --max_jobs 0",
            "caliban status --json | jq '.[] | .provenance.git.commit'",
        ),
    ),
    "watch": (
        "Follow a sweep on any platform until every job has ended: a live display on a "
        "terminal, one line per change otherwise; exits as `run` does (0 when every job "
        "succeeded). Vertex jobs of a --capacity ladder that wait too long, expire or find "
        "no capacity are moved to the next rung or region; stop and start it at any time.",
        (
            "caliban watch",
            "caliban watch --xgroup my-sweep --max_recoveries 2",
        ),
    ),
    "stop": (
        "Stop your unfinished jobs, of every platform: local containers are killed, Vertex "
        "jobs cancelled, Kubernetes Jobs deleted. Asks first; without a terminal, --yes is "
        "needed.",
        ("caliban stop --xgroup my-sweep", "caliban stop --dry_run", "caliban stop --yes"),
    ),
    "resubmit": (
        "Run again the latest job of each experiment of a group that failed or was "
        "stopped, with exactly the image and arguments recorded for it. Asks first; "
        "without a terminal, --yes is needed.",
        (
            "caliban resubmit --xgroup my-sweep --dry_run",
            "caliban resubmit --xgroup my-sweep --yes",
            "caliban resubmit --xgroup my-sweep --all_jobs",
        ),
    ),
    "logs": (
        "Print what a job wrote to stdout and stderr; --follow keeps printing while it "
        "runs. JOB is the id `caliban status` shows (its last 8 characters) or the full id.",
        ("caliban logs 9x2kf7qa", "caliban logs -f 9x2kf7qa"),
    ),
    "shell": (
        "",
        ("caliban shell --nogpu", "caliban shell --bare --image_id my-image:latest"),
    ),
    "notebook": ("", ("caliban notebook --nogpu", "caliban notebook --lab --port 8889")),
    "cloud": (
        "",
        (
            "caliban cloud --project_id my-project --region us-central1 train.py",
            "caliban cloud --experiment_config sweep.json --gpu_spec 2xV100 train.py -- --x 1",
            "caliban cloud --json --dry_run --experiment_config sweep.json train.py",
        ),
    ),
    "cluster": ("", ("caliban cluster ls", "caliban cluster job submit --nogpu train.py")),
    "cluster ls": (
        "List the GKE clusters of the Google Cloud project.",
        ("caliban cluster ls --project_id my-project", "caliban cluster ls --json"),
    ),
    "cluster create": (
        "Create a GKE cluster with node auto-provisioning, so that node pools with the "
        "GPUs a job asks for appear when it is submitted.",
        ("caliban cluster create --cluster_name research --zone us-central1-a --dry_run",),
    ),
    "cluster delete": (
        "Delete a GKE cluster and everything running on it. Asks first.",
        ("caliban cluster delete --cluster_name research",),
    ),
    "cluster node_pool": (
        "The node pools of a GKE cluster.",
        ("caliban cluster node_pool ls --cluster_name research",),
    ),
    "cluster node_pool ls": (
        "List the node pools of a GKE cluster, with their machine type and accelerators.",
        ("caliban cluster node_pool ls --cluster_name research",),
    ),
    "cluster pod": ("Pods on a cluster.", ("caliban cluster pod ls",)),
    "cluster pod ls": (
        "List the pods of a cluster, in every namespace but kube-system.",
        ("caliban cluster pod ls --kubeconfig ~/.kube/config --context kind-kind",),
    ),
    "cluster job": (
        "Kubernetes Jobs: list them, submit a sweep, or create those of a manifest file.",
        ("caliban cluster job ls", "caliban cluster job submit --nogpu train.py"),
    ),
    "cluster job ls": (
        "List the Kubernetes Jobs of a cluster (every namespace unless --namespace).",
        ("caliban cluster job ls --namespace default", "caliban cluster job ls --json"),
    ),
    "cluster job submit": (
        "",
        (
            "caliban cluster job submit --nogpu --experiment_config sweep.json train.py",
            "caliban cluster job submit --indexed --experiment_config sweep.json train.py",
            "caliban cluster job submit --export jobs.yaml train.py",
        ),
    ),
    "cluster job submit_file": (
        "Create the Jobs of a manifest file (for example one written by "
        "`caliban cluster job submit --export`).",
        ("caliban cluster job submit_file jobs.yaml --dry_run",),
    ),
    "config": ("", ("caliban config", "caliban config --json --nogpu")),
    "slurm": ("", ("caliban slurm submit --partition gpu --nogpu train.py",)),
    "slurm submit": (
        "",
        (
            "caliban slurm submit --partition gpu --time 2:00:00 train.py",
            "caliban slurm submit --experiment_config sweep.json --max_parallel 8 train.py",
        ),
    ),
    "completion": (
        "Print a tab-completion script for bash, zsh or fish, made from caliban's own "
        "flags. Load it from your shell's startup file.",
        (
            "echo 'eval \"$(caliban completion bash)\"' >> ~/.bashrc",
            "caliban completion zsh > ~/.zfunc/_caliban",
            "caliban completion fish > ~/.config/fish/completions/caliban.fish",
        ),
    ),
    "results": (
        "",
        (
            "caliban results --best accuracy",
            "caliban results --xgroup my-sweep --sort loss --min",
            "caliban results --plot learning_rate:accuracy --plot_file sweep.png",
            "caliban results --csv > sweep.csv",
        ),
    ),
    "show": (
        "Print one job as recorded: its state, arguments, and where its code came from "
        "(git commit, dirty tree, image digest, caliban version, command line), with the "
        "command that runs exactly that job again.",
        ("caliban show 9x2kf7qa", "caliban show 9x2kf7qa --json"),
    ),
}


def subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[str, argparse.ArgumentParser, str | None]]:
    """Every (sub)command under ``parser``: its path, its parser and its one-line help."""
    found: list[tuple[str, argparse.ArgumentParser, str | None]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((" ".join((*path, name)), sub, helps.get(name)))
                found.extend(subcommands(sub, (*path, name)))
    return found


def apply(parser: argparse.ArgumentParser) -> None:
    for path, sub, one_line in subcommands(parser):
        description, examples = HELP.get(path, ("", ()))
        if description:
            sub.description = description
        elif not sub.description and one_line:
            sub.description = one_line[0].upper() + one_line[1:] + "."
        if examples:
            text = "examples:\n" + "\n".join(f"  {e}" for e in examples)
            sub.epilog = f"{text}\n\n{sub.epilog}" if sub.epilog else text

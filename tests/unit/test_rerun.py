"""The command that reruns one recorded job."""

from __future__ import annotations

from caliban.core.rerun import rerun_argv, rerun_command


def test_sweep_flags_go_the_image_is_pinned_and_the_job_args_follow() -> None:
    command = [
        "caliban", "run", "--nogpu", "--experiment_config", "sweep.json", "--xgroup=g",
        "--dry_run", "train.py", "--", "--epochs", "2",
    ]  # fmt: skip
    argv = rerun_argv(
        command, entry="train.py", image="img:abc", args=["--epochs", "2", "--lr", "0.1"],
        platform="local",
    )  # fmt: skip
    assert argv == [
        "caliban", "run", "--nogpu", "--image_id", "img:abc", "train.py",
        "--", "--epochs", "2", "--lr", "0.1",
    ]  # fmt: skip


def test_remote_platforms_pin_with_image_tag_and_quote_for_a_shell() -> None:
    command = ["caliban", "cloud", "--image_tag", "old", "--region", "us-east1", "t.py"]
    text = rerun_command(
        command, entry="t.py", image="r/x@sha256:1", args=["--msg", "a b"], platform="vertex"
    )
    assert text == ("caliban cloud --region us-east1 --image_tag r/x@sha256:1 t.py -- --msg 'a b'")


def test_no_record_no_command() -> None:
    assert rerun_argv([], entry="t.py", image="i", args=[], platform="local") is None
    assert (
        rerun_argv(["caliban", "run", "t.py"], entry=None, image="i", args=[], platform="local")
        is None
    )
    # The entry must be found to be replaced; otherwise it is not exact.
    assert (
        rerun_argv(["caliban", "run", "x.py"], entry="t.py", image="i", args=[], platform="local")
        is None
    )

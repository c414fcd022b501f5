"""``caliban results`` on real local runs (Docker) and on the Kubernetes stand-in:
metrics read once through each platform's logs, kept in the store, shown as a
table, JSON, CSV and plots."""

from __future__ import annotations

import csv
import io
import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from caliban.adapters import plot as draw
from caliban.adapters.plot import IMAGE_SIZE
from caliban.core import results as table
from caliban.session import Session
from caliban.spec import JobState
from tests.conftest import MakeProject, run_cli
from tests.fakes.k8s import FakeKubernetes

from .cluster_support import request

docker = pytest.mark.docker

# Like the tutorial: accuracy per learning rate, best at 0.01. Noise around the
# metrics line (colours, an earlier report, a JSON array) must not matter, and
# --quiet prints no metrics at all.
TRAIN = textwrap.dedent(
    """
    import argparse, json, math
    p = argparse.ArgumentParser()
    p.add_argument("--learning_rate", type=float)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    worse = 0.02 if args.learning_rate > 0.01 else 0
    accuracy = round(0.97 - abs(math.log10(args.learning_rate) + 2) / 20 - worse, 4)
    print("training", flush=True)
    if not args.quiet:
        print(json.dumps({"accuracy": 0.1, "epoch": 1}))
        print("[1, 2, 3]")
        print("\\x1b[32m" + json.dumps({"accuracy": accuracy, "loss": 1 - accuracy}) + "\\x1b[0m")
    print("done", flush=True)
    """
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, base_image: str) -> dict[str, object]:
    """One real sweep for the whole module: 3 learning rates and a silent job."""
    import os

    from tests.conftest import RUN_ID, TEST_LABEL

    root = tmp_path_factory.mktemp("results")
    home = root / "home"
    home.mkdir()
    folder = root / "proj"
    folder.mkdir()
    (folder / "train.py").write_text(TRAIN)
    (folder / ".calibanconfig.json").write_text('{"default_mode": "cpu"}')
    (folder / "sweep.json").write_text(
        json.dumps(
            [
                {"learning_rate": [0.001, 0.01, 0.1]},
                {"learning_rate": 0.5, "quiet": True},
            ]
        )
    )
    env = dict(os.environ)
    env.update(
        CALIBAN_HOME=str(home),
        CALIBAN_BASE_IMAGE=base_image,
        CALIBAN_LABELS=f"{TEST_LABEL}={RUN_ID}",
        COLUMNS="200",
        XDG_CONFIG_HOME=str(root / "xdg"),
    )
    env.pop("CALIBAN_CONFIG", None)
    ran = run_cli(
        ["run", "--experiment_config", "sweep.json", "--xgroup", "lr", "train.py"],
        cwd=folder,
        env=env,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return {"folder": folder, "env": env, "home": home}


def _cli(sweep: dict[str, object], *args: str) -> tuple[int, str, str]:
    folder, env = sweep["folder"], sweep["env"]
    assert isinstance(folder, Path) and isinstance(env, dict)
    done = run_cli(["results", *args], cwd=folder, env=env)
    return done.returncode, done.stdout, done.stderr


def _logs(sweep: dict[str, object]) -> list[Path]:
    home = sweep["home"]
    assert isinstance(home, Path)
    return sorted((home / "logs").rglob("*.log"))


@docker
def test_best_names_the_best_learning_rate_and_a_second_call_reads_no_log(
    sweep: dict[str, object],
) -> None:
    code, out, err = _cli(sweep, "--best", "accuracy")
    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["job", "state", "learning_rate", "quiet", "accuracy", "loss"]
    assert row.split()[1:5] == ["SUCCEEDED", "0.01", "0.97", "0.03"]
    # What the jobs reported is kept: with every log gone, the same answer.
    logs = _logs(sweep)
    assert len(logs) == 4
    for log in logs:
        log.unlink()
    code, again, err = _cli(sweep, "--best", "accuracy")
    assert code == 0 and again == out, err
    # The default group is the latest one, and the table lists every job.
    code, out, err = _cli(sweep, "--sort", "accuracy")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 5, err
    assert [line.split()[2] for line in lines[1:]] == ["0.01", "0.001", "0.1", "0.5"]
    assert "reported no metrics" in lines[4]


@docker
def test_json_and_csv_parse_with_every_flag_and_metric(sweep: dict[str, object]) -> None:
    code, out, err = _cli(sweep, "--xgroup", "lr", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["learning_rate"] for r in rows] == [0.001, 0.01, 0.1, 0.5]
    assert [r["accuracy"] for r in rows] == [0.92, 0.97, 0.9, None]
    assert all(r["state"] == "SUCCEEDED" and len(r["job_id"]) > 8 for r in rows)
    assert rows[3]["quiet"] is True and rows[0]["quiet"] is None
    code, out, err = _cli(sweep, "--csv", "--metric", "accuracy", "--best", "accuracy")
    assert code == 0, err
    (best,) = csv.DictReader(io.StringIO(out))
    assert best == {
        "job_id": rows[1]["job_id"], "state": "SUCCEEDED", "learning_rate": "0.01",
        "quiet": "", "accuracy": "0.97",
    }  # fmt: skip
    code, out, _ = _cli(sweep, "--csv")
    assert len(list(csv.DictReader(io.StringIO(out)))) == 4


@docker
def test_plots_in_the_terminal_and_as_images(sweep: dict[str, object], tmp_path: Path) -> None:
    from PIL import Image

    code, out, err = _cli(sweep, "--plot", "learning_rate:accuracy")
    assert code == 0, err
    assert "accuracy vs learning_rate" in out and out.count("●") == 3
    assert "\x1b[" not in out  # not a terminal: no colours
    png = tmp_path / "sweep.png"
    code, _, err = _cli(sweep, "--plot", "learning_rate:accuracy", "--plot_file", str(png))
    assert code == 0 and f"wrote {png} (3 points)" in err
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == IMAGE_SIZE
        cli_pixels = image.convert("RGB").tobytes()

    async def drawn() -> list[draw.Point]:
        env = sweep["env"]
        assert isinstance(env, dict)
        async with Session(home=sweep["home"], environ=env) as s:  # type: ignore[arg-type]
            found = await s.results(xgroup="lr")
        return draw.write_image(table.plot(found, "learning_rate:accuracy"), tmp_path / "lib.png")

    import anyio

    points = anyio.run(drawn)
    with Image.open(tmp_path / "lib.png") as image:
        rgb = image.convert("RGB")
        # The command wrote the very picture the library draws.
        assert rgb.tobytes() == cli_pixels
        assert len(points) == 3
        for p in points:
            assert rgb.getpixel((round(p.x), round(p.y))) == p.rgb
        # Higher accuracy is higher up; larger learning rates further right.
        by_x = sorted(points, key=lambda p: p.x)
        assert by_x[1].y < by_x[0].y < by_x[2].y
        # Beside the markers the plot is background, so the check above can fail.
        assert rgb.getpixel((round(by_x[0].x), round(by_x[0].y) + 40)) != by_x[0].rgb
    svg = tmp_path / "sweep.svg"
    code, _, err = _cli(sweep, "--plot", "learning_rate:accuracy", "--plot_file", str(svg))
    assert code == 0, err
    tree = ET.parse(svg)
    ns = "{http://www.w3.org/2000/svg}"
    (series,) = [g for g in tree.iter(f"{ns}g") if g.get("id", "").startswith("series-")]
    assert len(list(series.iter(f"{ns}use"))) == 3


@docker
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["--plot", "lr:accuracy"],
            "no experiment has a flag named 'lr' (flags: learning_rate, quiet)",
        ),
        (["--plot", "learning_rate:acc"], "'acc' (metrics reported: accuracy, loss)"),
        (["--best", "nope"], "no job reported a metric named 'nope'"),
        (["--xgroup", "nope"], "no experiment group named 'nope'"),
        (["--json", "--csv"], "not allowed with argument"),
        (["--plot", "learning_rate:accuracy", "--plot_file", "x.pdf"], ".png or .svg"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(
    sweep: dict[str, object], tmp_path: Path, args: list[str], says: str
) -> None:
    target = tmp_path / "out.png"
    extra = (
        [] if "--plot_file" in args else ["--plot_file", str(target)] if "--plot" in args else []
    )
    code, out, err = _cli(sweep, *args, *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and says in err
    assert not target.exists()


async def test_kubernetes_jobs_report_through_their_pod_logs(
    tmp_path: Path,
    make_project: MakeProject,
    kube: FakeKubernetes,
    kubeconfig: Path,
    cenv: dict[str, str],
) -> None:
    async with Session(home=tmp_path / "home", environ=cenv) as s:
        sub = await s.cluster_submit(
            request(make_project(), kubeconfig, xgroup="k", experiments={"lr": [0.1, 0.2, 0.3]})
        )
        first, second, third = (str(j.platform_id) for j in sub.jobs)
        for name, text in ((first, '{"acc": 0.5}\n'), (second, 'x\n{"acc": 0.8}\nbye\n')):
            kube.set_job_running("default", name)
            kube.set_job_log("default", name, text)
            kube.succeed_job("default", name)
        kube.set_job_running("default", third)
        found = await s.results(xgroup="k")
        assert [r.job.state for r in found] == [JobState.SUCCEEDED] * 2 + [JobState.RUNNING]
        assert [r.metrics for r in found] == [{"acc": 0.5}, {"acc": 0.8}, None]
        assert found[2].note == "running: no metrics yet"
        assert table.best(found, "acc").job.job_id == sub.jobs[1].job_id
        # Kept once read: what the pods print now is not read again.
        kube.set_job_log("default", first, '{"acc": 0.0}\n')
        kube.set_job_log("default", third, '{"acc": 0.9}\n')
        kube.succeed_job("default", third)
        again = await s.results(xgroup="k")
        assert [r.metrics for r in again] == [{"acc": 0.5}, {"acc": 0.8}, {"acc": 0.9}]

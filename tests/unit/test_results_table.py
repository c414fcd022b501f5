"""A sweep's results as columns, sorted, the best job and a plot (caliban.core.results)."""

from __future__ import annotations

from typing import Any

import pytest

from caliban.core import results as table
from caliban.core.results import Result
from caliban.errors import ValidationError
from caliban.spec import JobRecord, JobState, Platform


def _result(
    index: int, kwargs: dict[str, object], metrics: dict[str, Any] | None, **job: Any
) -> Result:
    record = JobRecord(
        job_id=f"job{index:04d}", platform=Platform.LOCAL,
        state=job.pop("state", JobState.SUCCEEDED), xgroup="g", experiment_id=index,
        index=index, args=(), kwargs=kwargs, image="i", spec={}, details={}, platform_id=None,
        exit_code=0, message=None, log_path=None, user="u", created="", updated="",
    )  # fmt: skip
    return Result(record, metrics)


SWEEP = [
    _result(0, {"learning_rate": 0.001, "epochs": 5}, {"accuracy": 0.90, "loss": 0.5}),
    _result(1, {"learning_rate": 0.01, "epochs": 5}, {"accuracy": 0.95, "loss": 0.2}),
    _result(2, {"learning_rate": 0.1, "epochs": 5}, {"accuracy": 0.93, "loss": 0.3}),
    _result(3, {"learning_rate": 0.001, "epochs": 20}, {"accuracy": 0.94, "loss": 0.25}),
    _result(4, {"learning_rate": 0.01, "epochs": 20}, {"accuracy": 0.97, "loss": 0.1}),
    _result(5, {"learning_rate": 0.1, "epochs": 20}, {}),  # printed nothing
    _result(6, {"learning_rate": 0.3, "epochs": 20}, None, state=JobState.RUNNING),
]


def test_columns_are_fixed_then_flags_then_metrics() -> None:
    assert table.columns(SWEEP) == [
        "job_id",
        "state",
        "learning_rate",
        "epochs",
        "accuracy",
        "loss",
    ]
    assert table.columns(SWEEP, ["loss"]) == ["job_id", "state", "learning_rate", "epochs", "loss"]


def test_records_leave_missing_metrics_empty() -> None:
    rows = table.records(SWEEP, table.columns(SWEEP))
    assert rows[4] == {
        "job_id": "job0004", "state": "SUCCEEDED", "learning_rate": 0.01, "epochs": 20,
        "accuracy": 0.97, "loss": 0.1,
    }  # fmt: skip
    assert rows[5]["accuracy"] is None and rows[6]["state"] == "RUNNING"


def test_echoed_flags_are_not_repeated_and_clashes_are_renamed() -> None:
    r = _result(0, {"lr": 0.1}, {"lr": 0.1, "state": "good", "acc": 1})
    assert r.reported == {"reported.state": "good", "acc": 1}
    clash = _result(1, {"lr": 0.1}, {"lr": 0.2})
    assert clash.reported == {"reported.lr": 0.2}


def test_sort_puts_the_largest_first_and_jobs_without_a_number_last() -> None:
    order = [r.job.index for r in table.sort(SWEEP, "accuracy")]
    assert order == [4, 1, 3, 2, 0, 5, 6]
    order = [r.job.index for r in table.sort(SWEEP, "loss", smallest=True)]
    assert order == [4, 1, 3, 2, 0, 5, 6]


def test_best_is_the_max_or_with_smallest_the_min_and_ties_keep_sweep_order() -> None:
    assert table.best(SWEEP, "accuracy").job.index == 4
    assert table.best(SWEEP, "loss", smallest=True).job.index == 4
    assert table.best(SWEEP, "loss").job.index == 0
    tied = [_result(0, {"a": 1}, {"m": 1}), _result(1, {"a": 2}, {"m": 1})]
    assert table.best(tied, "m").job.index == 0


def test_text_and_nan_metrics_do_not_rank() -> None:
    rows = [
        _result(0, {"a": 1}, {"m": "high"}),
        _result(1, {"a": 2}, {"m": float("nan")}),
        _result(2, {"a": 3}, {"m": 0.5}),
    ]
    assert table.best(rows, "m").job.index == 2
    assert table.records(rows, ["m"])[1] == {"m": None}  # strict JSON has no NaN
    with pytest.raises(ValidationError, match="no job reported a number for 'm'"):
        table.best(rows[:2], "m")


def test_unknown_metrics_are_refused_with_the_names_that_exist() -> None:
    with pytest.raises(ValidationError, match=r"'acc' \(metrics reported: accuracy, loss\)"):
        table.best(SWEEP, "acc")
    with pytest.raises(ValidationError, match="'acc'"):
        table.columns(SWEEP, ["acc"])
    with pytest.raises(ValidationError, match="none yet"):
        table.sort([_result(0, {"a": 1}, None)], "accuracy")


def test_cells_read_as_a_person_writes_them() -> None:
    assert table.text(None) == "" and table.text(True) == "true"
    assert table.text(0.97123456) == "0.971235" and table.text(0.001) == "0.001"
    assert table.text({"a": [1, 2]}) == '{"a":[1,2]}' and table.text(5) == "5"


def test_plot_has_one_series_per_value_of_the_other_flags() -> None:
    plot = table.plot(SWEEP, "learning_rate:accuracy")
    assert [s.label for s in plot.series] == ["epochs=5", "epochs=20"]
    five, twenty = plot.series
    assert five.x == [0.001, 0.01, 0.1] and five.y == [0.90, 0.95, 0.93]
    # Job 5 printed nothing and job 6 is running: no point for them.
    assert twenty.x == [0.001, 0.01] and twenty.job_ids == ["job0003", "job0004"]
    assert plot.points == 5 and plot.log_x and plot.ticks is None


def test_plot_of_text_values_uses_categories() -> None:
    rows = [
        _result(0, {"opt": "sgd"}, {"acc": 0.5}),
        _result(1, {"opt": "adam"}, {"acc": 0.7}),
        _result(2, {"opt": "sgd"}, {"acc": 0.6}),
    ]
    plot = table.plot(rows, "opt:acc")
    assert plot.ticks == [(0.0, "sgd"), (1.0, "adam")] and not plot.log_x
    (series,) = plot.series
    assert series.label == "acc" and series.x == [0.0, 0.0, 1.0]


def test_plot_refuses_names_that_do_not_exist() -> None:
    with pytest.raises(ValidationError, match=r"'lr' \(flags: learning_rate, epochs\)"):
        table.plot(SWEEP, "lr:accuracy")
    with pytest.raises(ValidationError, match=r"'acc' \(metrics reported: accuracy, loss\)"):
        table.plot(SWEEP, "learning_rate:acc")
    with pytest.raises(ValidationError, match="PARAM:METRIC"):
        table.plot(SWEEP, "learning_rate")

"""The data half of the pipeline under the real `dvc repro` (tiny profile): what reruns, and determinism.

The data stages are targeted explicitly (`dvc repro balance`) so these tests stay fast as later
stages land in dvc.yaml.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import polars as pl
import pytest

if TYPE_CHECKING:  # the fixtures' types; conftest modules are not imported by name at run time
    from tests.pipeline.conftest import Project, Repro

pytestmark = pytest.mark.pipeline

DATA_STAGES = ["ingest", "clean", "split", "balance"]
PARQUET_OUTPUTS = [
    "data/turns.parquet",
    "data/clean.parquet",
    "data/split/train.parquet",
    "data/split/val.parquet",
    "data/split/test.parquet",
    "data/balanced.parquet",
]


class Built:
    """A project copy after its first `dvc repro balance`, with the digests of that first run."""

    def __init__(self, project: Project, first: Repro) -> None:
        self.project = project
        self.first = first
        self.first_digests = {p: project.digest(p) for p in [*PARQUET_OUTPUTS, "reports/plots/balance.csv"]}


@pytest.fixture(scope="module")
def built(make_project: Callable[[], Project]) -> Built:
    project = make_project()
    return Built(project, project.repro("balance"))


def test_first_repro_runs_every_data_stage_and_writes_valid_outputs(built: Built):
    assert built.first.ran == DATA_STAGES, built.first.output
    root = built.project.root
    for name in ("ingest", "clean", "split", "balance"):
        assert isinstance(json.loads((root / "reports" / f"{name}.json").read_text()), dict)
    splits = {s: pl.read_parquet(root / "data/split" / f"{s}.parquet") for s in ("train", "val", "test")}
    assert all(not f.is_empty() for f in splits.values())
    ids = [set(f["conversation_id"]) for f in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for s in ("val", "test"):
        assert splits[s]["method"].unique().to_list() == ["original"]
    metrics = json.loads((root / "reports/balance.json").read_text())
    if metrics["goal_met"] and metrics["intents_balanced"] >= 2:
        assert metrics["imbalance_after"] <= built.project.param("balance.max_imbalance", 0.2)
    plot = pl.read_csv(root / "reports/plots/balance.csv")
    assert plot.columns == ["intent", "stage", "conversations"]
    assert set(plot["stage"]) == {"before", "after"}


def test_the_balance_plot_renders_as_grouped_bars(built: Built):
    done = built.project.run("plots", "show", "--json", "reports/plots/balance.csv")
    spec = json.loads(done.stdout)["data"]["reports/plots/balance.csv"][0]["content"]
    assert spec["mark"]["type"] == "bar"
    assert spec["encoding"]["yOffset"]["field"] == "stage" and spec["encoding"]["color"]["field"] == "stage"
    assert (spec["encoding"]["x"]["field"], spec["encoding"]["y"]["field"]) == ("conversations", "intent")


def test_a_second_repro_reproduces_nothing(built: Built):
    built.project.repro("balance")  # settle whatever an earlier test changed
    again = built.project.repro("balance")
    assert again.reproduced == [], again.output
    assert again.unchanged == DATA_STAGES
    assert built.project.status("balance") == {}


def test_changing_balance_max_imbalance_reruns_balance_only(built: Built):
    project = built.project
    project.repro("balance")
    before = {p: project.digest(p) for p in PARQUET_OUTPUTS[:-1]}
    new_value = round(float(project.param("balance.max_imbalance", 0.2)) + 0.05, 2)
    project.set_param("balance.max_imbalance", new_value)
    assert set(project.status("balance")) == {"balance"}
    rerun = project.repro("balance")
    assert rerun.reproduced == ["balance"], rerun.output
    assert rerun.unchanged == ["ingest", "clean", "split"]
    assert {p: project.digest(p) for p in PARQUET_OUTPUTS[:-1]} == before
    assert json.loads((project.root / "reports/balance.json").read_text())["goal_met"] in (True, False)


def test_changing_a_clean_key_reruns_clean_onward_but_not_ingest(built: Built):
    project = built.project
    project.repro("balance")
    turns, clean = project.digest("data/turns.parquet"), project.digest("data/clean.parquet")
    # NFKC folds the demo corpus's full-width characters; turning it off must change the clean output
    project.set_param("clean.nfkc", not project.param("clean.nfkc", True))
    assert set(project.status("balance")) == {"clean"}  # split/balance only change once clean's output does
    rerun = project.repro("balance")
    assert rerun.reproduced == ["clean", "split", "balance"], rerun.output
    assert rerun.unchanged == ["ingest"]
    assert project.digest("data/turns.parquet") == turns
    assert project.digest("data/clean.parquet") != clean


def test_two_fresh_copies_produce_byte_identical_outputs(built: Built, project: Project):
    second = project.repro("balance")
    assert second.ran == DATA_STAGES, second.output
    assert {p: project.digest(p) for p in built.first_digests} == built.first_digests

"""The benchmark records (harness/benchmarks.py) agree with what is on disk: every task of tasks/ sits in its
record's folder and has a scorer, the suite files of conf/tasks/ list exactly the tasks the records give them,
and the leaderboard, the data check and the fixture writer read the records."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness import fixtures
from harness.benchmarks import BENCHMARKS, benchmark_for
from harness.leaderboard import benchmarks as board
from harness.scoring import scorer_for
from harness.tasks import COLUMNS, task_manager

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "conf" / "tasks").glob("*.yaml"))


@pytest.fixture(scope="module")
def index() -> dict:
    return task_manager().task_index


def test_names_are_unique_and_each_record_has_a_task_folder():
    names = [bench.name for bench in BENCHMARKS]
    assert len(names) == len(set(names))
    for bench in BENCHMARKS:
        assert (ROOT / "tasks" / bench.name).is_dir(), bench.name
        assert (ROOT / "tasks" / bench.name / "utils.py").is_file(), f"tasks/{bench.name}/ has no utils.py hooks"


def test_every_task_of_tasks_is_in_its_records_folder_with_a_scorer(index):
    folders = {bench.name for bench in BENCHMARKS}
    assert {p.name for p in (ROOT / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"} == folders
    for task, entry in index.items():
        bench = benchmark_for(task)
        assert bench is not None, f"task {task} belongs to no record of harness/benchmarks.py"
        assert Path(entry["yaml_path"]).parent.name == bench.name, (task, entry["yaml_path"])
        assert scorer_for(task) is not None, task


def test_every_record_task_and_column_task_exists(index):
    for bench in BENCHMARKS:
        for task in bench.tasks:
            assert task in index, f"{bench.name}: task {task} has no YAML under tasks/{bench.name}/"
        for column in bench.leaderboard:
            assert all(benchmark_for(task) is bench and task in index for task in column.tasks), column
        names = {column.name for column in bench.leaderboard}
        for number in bench.published:
            assert number.bench in names and benchmark_for(number.task) is bench, number


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_each_suite_file_lists_the_tasks_the_records_give_it(path):
    listed = yaml.safe_load(path.read_text())["names"]
    expected = {task for bench in BENCHMARKS for task, suites in bench.tasks.items() if path.stem in suites}
    assert len(listed) == len(set(listed)), f"conf/tasks/{path.name} lists a task twice"
    assert set(listed) == expected, (f"conf/tasks/{path.name} lists {sorted(set(listed) - expected)} that no record "
                                     f"gives it and lacks {sorted(expected - set(listed))} (harness/benchmarks.py)")


def test_every_suite_a_record_names_is_a_file():
    named = {suite for bench in BENCHMARKS for suites in bench.tasks.values() for suite in suites}
    assert named <= {path.stem for path in SUITES}


def test_the_tables_are_read_from_the_records():
    assert board.BENCHMARKS == tuple(column for bench in BENCHMARKS for column in bench.leaderboard)
    assert board.PUBLISHED == tuple(number for bench in BENCHMARKS for number in bench.published)
    assert COLUMNS == {key: cols for bench in BENCHMARKS for key, cols in bench.data_columns.items()}
    written = [folder for bench in BENCHMARKS if bench.fixture for folder in bench.fixture()]
    assert [folder for folder, _ in fixtures.specs()] == written
    assert fixtures.names() == tuple(folder for folder in written if "/" not in folder)

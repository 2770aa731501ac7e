"""The reference figures of the built-in tasks: `sangsaeng tasks` shows them for every task, and the
JSON it reads (`models/reference.json`) agrees with the zoo table of BENCHMARKS.md, so neither can
drift from the other (both are written by one run of `bench/zoo.py`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.cli import load_reference, reference_line
from models.tasks import builtin_tasks
from sangsaeng.cli import app

ROOT = Path(__file__).resolve().parents[1]
# bench/zoo.py measures the tabular and sequence tasks; image tasks have bench/vision.py.
ZOO = sorted(name for name, spec in builtin_tasks().items() if spec.image is None)
REFERENCE = ROOT / "models" / "reference.json"
BENCHMARKS = ROOT / "BENCHMARKS.md"


def zoo_table() -> dict[str, dict[str, str]]:
    """The zoo section's main table of BENCHMARKS.md: task -> column -> cell."""
    text = BENCHMARKS.read_text(encoding="utf-8")
    section = re.search(r"<!-- zoo:start -->(.*?)<!-- zoo:end -->", text, re.S)
    assert section, "BENCHMARKS.md has no zoo section: run python bench/zoo.py"
    lines = [line for line in section.group(1).splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header):
            break  # the next table
        rows[re.sub(r" \(\d+\)$", "", cells[0])] = dict(zip(header, cells, strict=True))
    return rows


def mean_of(cell: str) -> str:
    """The mean of a 'mean ± sd (...)' cell, as written."""
    match = re.match(r"(-?\d+\.\d+)", cell)
    assert match, f"no figure in cell '{cell}'"
    return match.group(1)


def test_reference_json_agrees_with_the_benchmarks_table():
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    table = zoo_table()
    assert set(reference["tasks"]) == set(ZOO) == set(table)
    for name, figures in reference["tasks"].items():
        row = table[name]
        assert int(row["seeds"]) == len(figures["seeds"]) and set(figures["seeds"]) <= set(reference["seeds"])
        assert row["metric"].startswith(figures["metric"]) and figures["metric"] == builtin_tasks()[name].primary_metric
        for column, key in (("centralised", "centralized"), ("local-only mean", "local_only_mean"),
                            ("federated", "federated"), ("federated DP eps 3", "dp_epsilon_3")):  # fmt: skip
            assert mean_of(row[column]) == f"{figures[key]:.3f}", (name, column)
    seeds = re.search(r"seeds \[([\d, ]+)\]", BENCHMARKS.read_text(encoding="utf-8").split("<!-- zoo:start -->")[1])
    assert seeds and [int(s) for s in seeds.group(1).split(",")] == reference["seeds"]


def test_tasks_command_shows_the_reference_figures_of_every_zoo_task():
    done = CliRunner().invoke(app, ["tasks"], env={"COLUMNS": "400"})
    assert done.exit_code == 0, done.output
    shown = " ".join(done.output.split())
    reference = load_reference()
    for name in ZOO:
        line = reference_line(name, reference)
        assert line is not None, f"no reference figures for built-in task '{name}' in models/reference.json"
        assert " ".join(line.split()) in shown
        assert f"federated {reference['tasks'][name]['federated']:.3f}" in line


@pytest.mark.parametrize("reference", [{}, {"tasks": {}}])
def test_a_task_without_reference_figures_shows_none(reference):
    assert reference_line("predictive-maintenance", reference) is None


def test_tasks_command_shows_image_inputs_and_brackets_in_descriptions_as_text():
    done = CliRunner().invoke(app, ["tasks"], env={"COLUMNS": "400"})
    shown = " ".join(done.output.split())
    assert "solar-cell-inspection (binary, label 'defective', 96x96 images, 1 channel(s)" in shown
    assert 'pip install "sangsaeng[vision]"' in shown  # not eaten as console markup

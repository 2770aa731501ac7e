"""Command-line errors a user can make get one clear message and exit code 2, before any training."""

from __future__ import annotations

from typer.testing import CliRunner

from coordinator.cli import app
from tests.conftest import dataset_path

runner = CliRunner()


def said(result) -> str:
    """The command's output with the terminal's line wrapping undone."""
    return " ".join(result.output.split())


def test_demo_refuses_an_unknown_task(tmp_path):
    done = runner.invoke(app, ["demo", "--task", "welding-seams", "--out", str(tmp_path / "out")])
    assert done.exit_code == 2
    assert "unknown demo task 'welding-seams'" in said(done)
    assert not (tmp_path / "out").exists()


def test_simulate_refuses_a_missing_split_column(tmp_path):
    spec = tmp_path / "task.toml"
    spec.write_text('[task]\nname = "t"\nkind = "binary"\nlabel = "Machine failure"\nfeatures = ["Torque [Nm]"]\n')
    done = runner.invoke(app, ["simulate", "--data", str(dataset_path("ai4i2020.csv")), "--task-spec", str(spec),
                               "--split-by", "Supplier", "--out", str(tmp_path / "out")])  # fmt: skip
    assert done.exit_code == 2
    assert "split column 'Supplier' is not in the data" in said(done)


def test_simulate_refuses_an_unreadable_data_file(tmp_path):
    spec = tmp_path / "task.toml"
    spec.write_text('[task]\nname = "t"\nkind = "binary"\nlabel = "y"\nfeatures = ["x"]\n')
    done = runner.invoke(app, ["simulate", "--data", str(tmp_path / "absent.csv"), "--task-spec", str(spec),
                               "--split-by", "site"])  # fmt: skip
    assert done.exit_code == 2 and "file not found" in said(done)


def test_client_validate_names_the_problem(tmp_path, ai4i):
    path = tmp_path / "line.csv"
    ai4i.head(50).drop(columns=["Torque [Nm]"]).to_csv(path, index=False)
    done = runner.invoke(app, ["client", "validate", "--task", "predictive-maintenance", "--data", str(path)])
    assert done.exit_code == 2 and "Torque [Nm]" in said(done)
    ai4i.head(50).to_csv(path, index=False)
    ok = runner.invoke(app, ["client", "validate", "--task", "predictive-maintenance", "--data", str(path)])
    assert ok.exit_code == 0 and "50 rows fit task 'predictive-maintenance'" in said(ok)


def test_demo_refuses_an_unknown_model_or_bad_hidden_layers(tmp_path):
    done = runner.invoke(app, ["demo", "--model", "forest", "--out", str(tmp_path / "out")])
    assert done.exit_code == 2 and "unknown model 'forest' (known: ['mlp', 'ple'])" in said(done)
    done = runner.invoke(app, ["demo", "--hidden", "64,x", "--out", str(tmp_path / "out")])
    assert done.exit_code == 2 and "hidden layers must be widths like 64,32 or 'none', got '64,x'" in said(done)
    done = runner.invoke(app, ["demo", "--hidden", "0", "--out", str(tmp_path / "out")])
    assert done.exit_code == 2 and "widths must be positive" in said(done)
    assert not (tmp_path / "out").exists()


def test_parse_hidden():
    from coordinator.config import parse_hidden

    assert parse_hidden(None) is None and parse_hidden("none") == () and parse_hidden("") == ()
    assert parse_hidden("64,32") == (64, 32) and parse_hidden(" 16 ") == (16,)

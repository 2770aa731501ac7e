"""The command line: errors a user can make get one clear message and exit code 2, before any training;
the training options are the same on `demo`, `simulate` and `coordinator run`; each role mounts its own group."""

from __future__ import annotations

from typer.testing import CliRunner

from sangsaeng.cli import app
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
    assert done.exit_code == 2 and "unknown model 'forest' (known: ['cnn', 'mlp', 'ple', 'tcn'])" in said(done)
    done = runner.invoke(app, ["demo", "--hidden", "64,x", "--out", str(tmp_path / "out")])
    assert done.exit_code == 2 and "hidden layers must be widths like 64,32 or 'none', got '64,x'" in said(done)
    done = runner.invoke(app, ["demo", "--hidden", "0", "--out", str(tmp_path / "out")])
    assert done.exit_code == 2 and "widths must be positive" in said(done)
    assert not (tmp_path / "out").exists()


def test_parse_hidden():
    from coordinator.config import parse_hidden

    assert parse_hidden(None) is None and parse_hidden("none") == () and parse_hidden("") == ()
    assert parse_hidden("64,32") == (64, 32) and parse_hidden(" 16 ") == (16,)


TRAINING_FLAGS = [
    "--rounds", "3", "--strategy", "fedmedian", "--local-epochs", "5", "--batch-size", "32", "--lr", "0.01",
    "--model", "ple", "--hidden", "16", "--fraction-fit", "0.5", "--min-sites", "3", "--seed", "7", "--resume",
    "--dp-epsilon", "4", "--dp-max-grad-norm", "2.5", "--key-dir", "keys",
]  # fmt: skip


def parsed_options(*words: str):
    """The `TrainingOptions` a command gets from its words, as typer parses them (no training, no Flower)."""
    import click
    import typer

    from coordinator.options import TrainingOptions

    command: click.Command = typer.main.get_command(app)
    context = command.make_context("sangsaeng", list(words), resilient_parsing=True)
    args = list(words)
    while isinstance(command, click.Group):
        name, command, args = command.resolve_command(context, args)
        context = command.make_context(name, args, parent=context)
        args = context.protected_args + context.args if isinstance(command, click.Group) else []
    return TrainingOptions.from_params(context.params)


def test_coordinator_run_takes_demos_training_options_into_the_same_settings(tmp_path):
    from models.tasks import get_task

    spec, out = get_task("predictive-maintenance"), tmp_path / "run"
    demo = parsed_options("demo", *TRAINING_FLAGS).federation_config(spec, out_dir=out)
    deployed = parsed_options("coordinator", "run", *TRAINING_FLAGS).federation_config(spec, out_dir=out)
    simulated = parsed_options("simulate", "--data", "x.csv", "--task-spec", "t.toml", "--split-by", "s",
                               *TRAINING_FLAGS).federation_config(spec, out_dir=out)  # fmt: skip
    assert deployed == demo == simulated
    assert (deployed.strategy, deployed.num_rounds, deployed.lr, deployed.fraction_fit) == ("fedmedian", 3, 0.01, 0.5)
    assert (deployed.local_epochs, deployed.batch_size, deployed.hidden, deployed.resume) == (5, 32, (16,), True)
    # Left out, every option means the same default on both.
    plain = parsed_options("demo").federation_config(spec, out_dir=out)
    assert parsed_options("coordinator", "run").federation_config(spec, out_dir=out) == plain


def test_coordinator_run_hands_the_strategy_to_the_settings_before_starting_flower(tmp_path):
    done = runner.invoke(app, ["coordinator", "run", "--strategy", "fedmedian", "--central-dp-noise", "1",
                               "--state", str(tmp_path / "state"), "--out", str(tmp_path / "out")])  # fmt: skip
    assert done.exit_code == 2
    assert "'fedmedian' is not a mean" in said(done)
    done = runner.invoke(app, ["coordinator", "run", "--strategy", "geomedian", "--state", str(tmp_path / "state")])
    assert done.exit_code == 2 and "unknown strategy 'geomedian'" in said(done)
    assert not (tmp_path / "state").exists()  # refused before anything was written or started


def test_each_role_mounts_its_own_group_and_enrol_is_spelled_one_way():
    import typer

    root = typer.main.get_command(app)
    assert {"demo", "simulate", "tasks", "client", "coordinator", "portal", "privacy"} <= set(root.commands)
    client = root.commands["client"]
    enrol, enroll = client.commands["enrol"], client.commands["enroll"]  # the old spelling, for old scripts
    assert [p.name for p in enroll.params] == [p.name for p in enrol.params] and enroll.help == enrol.help
    assert enroll.hidden and not enrol.hidden
    shown = said(runner.invoke(app, ["client", "--help"]))
    assert "enrol" in shown and "enroll" not in shown


def test_the_old_entry_point_is_the_root_command_line():
    import subprocess
    import sys

    from coordinator import cli as old

    assert old.app is app
    done = subprocess.run([sys.executable, "-m", "sangsaeng", "tasks"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "predictive-maintenance" in done.stdout

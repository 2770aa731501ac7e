"""Task specs: built-ins, TOML loading, and specs refused before any training."""

from __future__ import annotations

import pytest

from models.errors import TaskSpecError
from models.tasks import builtin_tasks, get_task, load_task_spec

GOOD = """
[task]
name = "spindle-temperature"
kind = "regression"
label = "Process temperature [K]"
features = ["Air temperature [K]", "Rotational speed [rpm]", "Type"]
categorical = ["Type"]
id_columns = ["UDI"]
"""


def write(tmp_path, text):
    path = tmp_path / "task.toml"
    path.write_text(text)
    return path


def test_builtin_tasks_keep_ids_and_leaks_out_of_features():
    tasks = builtin_tasks()
    assert {"injection-molding-quality", "predictive-maintenance"} <= set(tasks)
    kamp = tasks["injection-molding-quality"]
    assert len(kamp.features) == 26 and "Reason" in kamp.leak_columns and "PART_NAME" not in kamp.features
    pm = tasks["predictive-maintenance"]
    assert pm.categorical_features == ("Type",)
    assert not set(pm.features) & {"TWF", "HDF", "PWF", "OSF", "RNF", "UDI", "Product ID"}
    assert pm.primary_metric == "roc_auc" and pm.metrics == ("roc_auc", "pr_auc", "f1")


def test_toml_spec_loads(tmp_path):
    spec = load_task_spec(write(tmp_path, GOOD))
    assert spec.kind == "regression" and spec.metrics == ("rmse", "mae")
    assert spec.numeric_features == ("Air temperature [K]", "Rotational speed [rpm]")
    assert spec.categorical_features == ("Type",)
    assert get_task(str(tmp_path / "task.toml")) == spec
    assert len(spec.schema_hash()) == 64


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('kind = "regression"', 'kind = "multiclass"'), "unknown kind 'multiclass'"),
        (('id_columns = ["UDI"]', 'leak_columns = ["Type"]'), "leak column(s) ['Type'] must never be features"),
        (('id_columns = ["UDI"]', 'id_columns = ["Rotational speed [rpm]"]'), "id column(s)"),
        (('label = "Process temperature [K]"', 'label = "Type"'), "label 'Type' is also listed as a feature"),
        (('name = "spindle-temperature"\n', ""), "[task] needs 'name'"),
    ],
)
def test_bad_specs_are_refused(tmp_path, change, message):
    with pytest.raises(TaskSpecError) as info:
        load_task_spec(write(tmp_path, GOOD.replace(*change)))
    assert message in str(info.value)
    assert "task.toml" in str(info.value)


def test_missing_label_in_data_is_refused():
    spec = get_task("predictive-maintenance")
    with pytest.raises(TaskSpecError, match="label column 'Machine failure' is not in the data"):
        spec.check_columns(["Type", "Torque [Nm]"], source="plant.csv")


def test_unreadable_and_missing_spec_files(tmp_path):
    with pytest.raises(TaskSpecError, match="not valid TOML"):
        load_task_spec(write(tmp_path, "[task\nname="))
    with pytest.raises(TaskSpecError, match="task spec file not found"):
        load_task_spec(tmp_path / "nope.toml")
    with pytest.raises(TaskSpecError, match="unknown task 'nope'"):
        get_task("nope")

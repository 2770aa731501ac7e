"""Task specs: built-ins, TOML loading, and specs refused before any training."""

from __future__ import annotations

import pytest

from models.errors import TaskSpecError
from models.tasks import TaskSpec, builtin_tasks, get_task, load_task_spec

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
        (('kind = "regression"', 'kind = "ranking"'), "unknown kind 'ranking'"),
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


DERIVED_TABLE = """
[task.derived]
"Speed [rad/s]" = "`Rotational speed [rpm]` * 2 * pi / 60"
"Warming [K]" = "-(`Air temperature [K]` - 300)"
"""


def test_derived_features_follow_the_measured_ones_in_declared_order(tmp_path):
    spec = load_task_spec(write(tmp_path, GOOD + DERIVED_TABLE))
    assert spec.derived_features == ("Speed [rad/s]", "Warming [K]")
    assert spec.numeric_features == ("Air temperature [K]", "Rotational speed [rpm]", "Speed [rad/s]", "Warming [K]")
    # The order survives the JSON the coordinator sends to every site (keys sorted there).
    assert TaskSpec.from_json(spec.to_json()) == spec
    assert TaskSpec.from_json(spec.to_json()).numeric_features == spec.numeric_features
    assert spec.schema_hash() != load_task_spec(write(tmp_path, GOOD)).schema_hash()


def test_a_spec_without_derived_features_keeps_its_schema_hash(tmp_path):
    spec = load_task_spec(write(tmp_path, GOOD))
    assert "derived" not in spec.to_dict()


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("`Torque [Nm]` * 2", "derived feature 'X' uses ['Torque [Nm]'], which must be numeric features"),
        ("`Type` * 2", "uses ['Type'], which must be numeric features"),
        ("`Process temperature [K]` + 1", "uses ['Process temperature [K]']"),  # the label
        ("`Air temperature [K]` ** 2", "only + - * / are allowed"),
        ("abs(`Air temperature [K]`)", "only + - * / on columns and numbers are allowed"),
        ("`Air temperature [K]`.real", "only + - * / on columns and numbers are allowed"),
        ("__import__('os')", "only + - * / on columns and numbers are allowed"),
        ("Air + 1", "unknown name 'Air'"),
        ("`Air temperature [K]` * 'x'", "only numbers may appear as constants"),
        ("`Air temperature [K] * 2", "unbalanced backtick"),
        ("`Air temperature [K]` *", "is not an arithmetic expression"),
        ("2 * pi", "uses no column"),
        ("", "the expression is empty"),
    ],
)
def test_bad_derived_features_are_refused(tmp_path, expression, message):
    text = GOOD + f"\n[task.derived]\nX = '''{expression}'''\n"  # a TOML literal string: quotes kept as typed
    with pytest.raises(TaskSpecError) as info:
        load_task_spec(write(tmp_path, text))
    assert message in str(info.value)
    assert "task.toml" in str(info.value) and "derived feature 'X'" in str(info.value)


def test_a_derived_feature_may_not_shadow_a_column():
    with pytest.raises(TaskSpecError, match="derived feature 'Torque' has the name of a column"):
        TaskSpec(name="t", kind="regression", label="y", features=("Torque",), derived=(("Torque", "`Torque` * 2"),))


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

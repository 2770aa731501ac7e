"""Every bad site export gets one clear error naming the file, the column and the problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.errors import SiteDataError
from models.schema import load_site_data
from models.tasks import TaskSpec, get_task

PM = get_task("predictive-maintenance")


@pytest.fixture
def site(ai4i, tmp_path):
    """A factory: write (a changed copy of) 200 real AI4I rows and return the path."""

    def make(change=None, name="site.csv"):
        frame = ai4i.head(200).copy()
        if change:
            frame = change(frame)
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return path

    return make


def error_of(path, spec=PM) -> SiteDataError:
    with pytest.raises(SiteDataError) as info:
        load_site_data(path, spec)
    assert str(path) in str(info.value)
    return info.value


def test_good_file_loads_and_keeps_only_task_columns(site):
    frame = load_site_data(site(), PM)
    assert sorted(frame.columns) == sorted([*PM.features, *PM.derived_features, PM.label])
    assert len(frame) == 200


def test_derived_features_are_computed_from_the_rows_own_columns(site, ai4i):
    frame = load_site_data(site(), PM)
    raw = ai4i.head(200)
    torque, rpm = raw["Torque [Nm]"].to_numpy(), raw["Rotational speed [rpm]"].to_numpy()
    np.testing.assert_allclose(frame["Power [W]"], torque * rpm * 2 * np.pi / 60)
    np.testing.assert_allclose(
        frame["Temperature difference [K]"], raw["Process temperature [K]"] - raw["Air temperature [K]"]
    )
    np.testing.assert_allclose(frame["Strain [min Nm]"], raw["Tool wear [min]"] * torque)
    # The AI4I documentation's worked numbers: 40 Nm at 1,500 rpm is about 6.3 kW.
    assert 40 * 1500 * 2 * np.pi / 60 == pytest.approx(6283.2, abs=0.1)


def test_a_column_named_like_a_derived_feature_is_not_read(site):
    def forged(f):
        return f.assign(**{"Power [W]": -1.0})

    assert (load_site_data(site(forged), PM)["Power [W]"] > 0).all()


def test_bad_input_to_a_derived_feature_names_the_measured_column(site):
    def text(f):
        f["Torque [Nm]"] = f["Torque [Nm]"].astype(object)
        f.loc[4, "Torque [Nm]"] = "forty"
        return f

    err = error_of(site(text))
    assert err.column == "Torque [Nm]" and "found text" in str(err) and "'forty'" in str(err)


def test_a_non_finite_derived_feature_names_it(site, tmp_path):
    spec = TaskSpec(
        name="ratio", kind="binary", label="Machine failure", features=("Torque [Nm]", "Tool wear [min]"),
        derived=(("Torque per wear [Nm/min]", "`Torque [Nm]` / `Tool wear [min]`"),),
    )  # fmt: skip
    frame = pd.read_csv(site())
    frame.loc[:, "Tool wear [min]"] = np.arange(1, 201)
    frame.loc[6, "Tool wear [min]"] = 0
    path = tmp_path / "zero-wear.csv"
    frame.to_csv(path, index=False)
    err = error_of(path, spec)
    assert err.column == "Torque per wear [Nm/min]"
    assert "not finite (division by zero?)" in str(err) and "data row 7" in str(err)


def test_parquet_is_read_too(ai4i, tmp_path):
    path = tmp_path / "site.parquet"
    ai4i.head(50).to_parquet(path)
    assert len(load_site_data(path, PM)) == 50


def test_missing_file(tmp_path):
    assert "file not found" in str(error_of(tmp_path / "absent.csv"))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    assert "file is empty" in str(error_of(path))


def test_header_only(ai4i, tmp_path):
    path = tmp_path / "header.csv"
    ai4i.head(0).to_csv(path, index=False)
    assert "no data rows" in str(error_of(path))


def test_unreadable_csv(tmp_path):
    path = tmp_path / "garbage.csv"
    path.write_bytes(b'a,b\n"unterminated,1\n' + bytes(range(128, 256)))
    assert "cannot be read as CSV" in str(error_of(path))


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    assert "cannot be read as Parquet" in str(error_of(path))


def test_missing_column(site):
    err = error_of(site(lambda f: f.drop(columns=["Torque [Nm]"])))
    assert "Torque [Nm]" in str(err) and "not found" in str(err)


def test_missing_label(site):
    err = error_of(site(lambda f: f.drop(columns=["Machine failure"])))
    assert "label column ['Machine failure'] not found" in str(err)


def test_wrong_dtype(site):
    def text_in_numbers(f):
        f["Tool wear [min]"] = f["Tool wear [min]"].astype(object)
        f.loc[7, "Tool wear [min]"] = "twelve"
        return f

    err = error_of(site(text_in_numbers))
    assert err.column == "Tool wear [min]"
    assert "expected numbers, found text" in str(err) and "data row 8" in str(err) and "'twelve'" in str(err)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(site, bad):
    def poison(f):
        f.loc[3, "Torque [Nm]"] = bad
        return f

    err = error_of(site(poison))
    assert err.column == "Torque [Nm]" and "non-finite" in str(err)


def test_value_far_outside_range(site):
    def kelvin_as_celsius(f):
        f.loc[5, "Air temperature [K]"] = 25.0  # an export in °C instead of K
        return f

    err = error_of(site(kelvin_as_celsius))
    assert err.column == "Air temperature [K]"
    assert "outside the plausible range [250, 350]" in str(err) and "25.0" in str(err)


def test_binary_label_not_zero_one(site):
    def label_two(f):
        f.loc[0, "Machine failure"] = 2
        return f

    err = error_of(site(label_two))
    assert err.column == "Machine failure" and "must be 0 or 1" in str(err)


def test_unknown_category_level(site):
    def new_type(f):
        f.loc[1, "Type"] = "X"
        return f

    err = error_of(site(new_type))
    assert err.column == "Type" and "unknown level" in str(err) and "'X'" in str(err)


def test_error_survives_pickling(tmp_path):
    """Errors cross process boundaries (Ray workers) intact."""
    import pickle

    err = SiteDataError(tmp_path / "x.csv", "bad", column="c")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.column == "c"


def test_kamp_real_data_passes_its_schema(kamp, tmp_path):
    path = tmp_path / "kamp.csv"
    kamp.to_csv(path, index=False)
    frame = load_site_data(path, get_task("injection-molding-quality"))
    assert len(frame) == 5232 and int(frame["PassOrFail"].sum()) == 60
    assert isinstance(frame, pd.DataFrame)

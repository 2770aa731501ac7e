"""Image tasks at the line and in the run's record: `sangsaeng client predict` on a manifest or a
folder of images (in batches, with progress, a bad image written with its reason), `client
validate`'s skipped and converted images, the same report in a site's profile reply, the run
manifest and results.json, and the model card's normalisation. Small images made here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from client.portal_commands import predict
from client.predict_images import PROBLEM_COLUMN
from models.images import IMAGE_REPORT, PIXELS, describe_conversions
from models.nets import get_weights
from models.schema import load_site_data
from models.training import predict_frame
from portal.artifact import build_artifact, describe_inputs, read_artifact
from sangsaeng.cli import app
from tests.factories import image_manifest, scored_image_model

runner = CliRunner()


def said(result) -> str:
    """The command's output with the terminal's line wrapping undone."""
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def cell_model(tmp_path_factory):
    """A real 4-level cnn artifact (generated cells) and its parts: (path, spec, scaler, net)."""
    folder = tmp_path_factory.mktemp("train")
    spec, scaler, net, _ = scored_image_model(folder)
    path = folder / "cells.zip"
    path.write_bytes(build_artifact(get_weights(net), task=spec.to_dict(), scaler_json=scaler.to_json(),
                                    hidden=[8, 8], source={}, model="cnn"))  # fmt: skip
    return path, spec, scaler, net


def _spoil(folder) -> dict[str, str]:
    """Make three images of a manifest's folder bad and one RGB; returns what each bad one's problem names."""
    (folder / "cell001.png").unlink()  # missing
    (folder / "cell004.png").write_bytes(b"")  # empty
    data = (folder / "cell007.png").read_bytes()
    (folder / "cell007.png").write_bytes(data[: len(data) // 2])  # truncated
    rgb = np.stack([np.asarray(Image.open(folder / "cell010.png"))] * 3, axis=-1)
    Image.fromarray(rgb, mode="RGB").save(folder / "cell010.png")
    return {"cell001.png": "image file not found", "cell004.png": "empty (0 bytes)", "cell007.png": "cannot be read"}


def test_a_manifest_is_scored_in_batches_and_a_bad_image_keeps_its_row_with_the_reason(cell_model, tmp_path):
    path, spec, scaler, net = cell_model
    manifest = image_manifest(tmp_path / "lot", 24, seed=3)
    bad = _spoil(tmp_path / "lot")
    progress: list[tuple[int, int]] = []

    report = predict(path, manifest, batch_size=5, on_progress=lambda done, total: progress.append((done, total)))

    scores = pd.read_csv(report.path, dtype={"predicted_defect_level": str})
    assert report.path == tmp_path / "lot" / "manifest.scores.csv"
    assert list(scores.columns) == ["image", "cell_type", "predicted_defect_level", "p_defect_level", PROBLEM_COLUMN]
    assert scores["image"].tolist() == pd.read_csv(manifest)["image"].tolist()  # every row, paths as written
    assert (report.images, report.predictions, report.skipped) == (24, 21, 3)
    assert report.converted == {"RGB": 1}
    for name, problem in bad.items():
        row = scores[scores["image"] == name].iloc[0]
        assert np.isnan(row["p_defect_level"]) and pd.isna(row["predicted_defect_level"])
        assert problem in row[PROBLEM_COLUMN] and name in row[PROBLEM_COLUMN]
    assert [p for p in report.first_skipped] == scores[PROBLEM_COLUMN].dropna().tolist()
    # Progress after each batch of 5 scored images, then at the end: decoding never runs ahead of a batch.
    assert progress[-1] == (24, 24) and len(progress) == 5 and all(t == 24 for _, t in progress)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    # The same probabilities as scoring the good images all at once (the converted one included).
    good = scores[scores[PROBLEM_COLUMN].isna()].reset_index(drop=True)
    listed = pd.read_csv(manifest)
    listed[~listed["image"].isin(bad)].to_csv(tmp_path / "lot" / "good.csv", index=False)
    frame = load_site_data(tmp_path / "lot" / "good.csv", spec)
    whole = predict_frame(net, frame, spec=spec, scaler=scaler).predictions
    best = whole.argmax(axis=1)
    np.testing.assert_allclose(good["p_defect_level"], whole[np.arange(len(best)), best], rtol=1e-5)
    assert good["predicted_defect_level"].tolist() == [scaler.classes[k] for k in best]
    assert set(report.metrics) >= {"macro_f1", "accuracy"}  # labels present: measured over the scored images


def test_a_folder_of_images_is_scored_sorted_without_labels_and_the_cli_shows_progress(cell_model, tmp_path):
    path, *_ = cell_model
    lot = tmp_path / "lot"
    image_manifest(lot, 6, seed=4)
    (lot / "manifest.csv").unlink()
    Image.open(lot / "cell000.png").save(lot / "a.JPG")
    Image.open(lot / "cell001.png").save(lot / "b.bmp")
    Image.open(lot / "cell002.png").save(lot / "c.tiff")
    (lot / "notes.txt").write_text("not an image")
    (lot / "older").mkdir()
    Image.open(lot / "cell003.png").save(lot / "older" / "d.png")  # not recursive

    done = runner.invoke(app, ["client", "predict", str(path), str(lot), "--batch-size", "2"])

    assert done.exit_code == 0, done.output
    written = tmp_path / "lot.scores.csv"  # beside the folder, not among the images
    assert f"scores: {written} (9 prediction(s))" in said(done)
    scores = pd.read_csv(written)
    assert scores["image"].tolist() == sorted(["a.JPG", "b.bmp", "c.tiff", *(f"cell{i:03d}.png" for i in range(6))])
    assert scores[PROBLEM_COLUMN].isna().all() and scores["p_defect_level"].between(0, 1).all()


def test_a_binary_model_writes_a_score_and_a_class_and_an_empty_folder_is_refused(tmp_path):
    spec, scaler, net, _ = scored_image_model(tmp_path / "train", name="solar-cell-inspection")
    model = tmp_path / "binary.zip"
    model.write_bytes(build_artifact(get_weights(net), task=spec.to_dict(), scaler_json=scaler.to_json(),
                                     hidden=[8, 8], source={}, model="cnn"))  # fmt: skip
    manifest = image_manifest(tmp_path / "lot", 8, seed=5)
    pd.read_csv(manifest).drop(columns=["defective"]).to_csv(manifest, index=False)  # new parts: no label
    report = predict(model, manifest)
    scores = pd.read_csv(report.path)
    assert report.metrics == {} and report.predictions == 8
    assert scores["predicted_defective"].tolist() == (scores["p_defective"] >= 0.5).astype(int).tolist()
    (tmp_path / "empty").mkdir()
    done = runner.invoke(app, ["client", "predict", str(model), str(tmp_path / "empty")])
    assert done.exit_code == 2 and "no image file in this folder" in said(done) and "empty" in said(done)


def test_the_cli_names_the_bad_images_and_the_conversions(cell_model, tmp_path):
    path, *_ = cell_model
    manifest = image_manifest(tmp_path / "lot", 12, seed=6)
    _spoil(tmp_path / "lot")
    done = runner.invoke(app, ["client", "predict", str(path), str(manifest)])
    assert done.exit_code == 0, done.output
    text = said(done)
    assert "3 of 12 image(s) not scored" in text and "cell001.png" in text and "cell007.png" in text
    assert "converted 1 RGB image to grayscale" in text


# -- the site's report: validate, profile reply, run manifest, results.json ----------------------
def test_validate_counts_and_names_skipped_and_converted_images(tmp_path):
    manifest = image_manifest(tmp_path / "site", 80, seed=7)
    (tmp_path / "site" / "cell005.png").unlink()
    for i in (10, 11, 12):
        rgb = np.stack([np.asarray(Image.open(tmp_path / "site" / f"cell{i:03d}.png"))] * 3, axis=-1)
        Image.fromarray(rgb, mode="RGB").save(tmp_path / "site" / f"cell{i:03d}.png")
    done = runner.invoke(app, ["client", "validate", "--task", "solar-cell-inspection", "--data", str(manifest)])
    assert done.exit_code == 0, done.output
    text = said(done)
    assert "ok:" in text and "79 rows fit task 'solar-cell-inspection'" in text
    assert "images: 80 in the manifest, 1 skipped" in text and "data row 6: image file not found" in text
    assert "cell005.png" in text and "converted 3 RGB images to grayscale" in text
    # The report survives the decode cache: a second validation reads the cache and says the same.
    again = runner.invoke(app, ["client", "validate", "--task", "solar-cell-inspection", "--data", str(manifest)])
    assert "converted 3 RGB images to grayscale" in said(again)
    assert list((tmp_path / "site").rglob("*.from"))  # the conversion marker beside the cached entries


def test_describe_conversions_names_each_mode():
    assert describe_conversions({"RGB": 3}, 1) == "converted 3 RGB images to grayscale"
    assert describe_conversions({"L": 1, "RGBA": 2}, 3) == "converted 1 L image to RGB, converted 2 RGBA images to RGB"
    assert describe_conversions({}, 1) == ""


def test_the_profile_reply_carries_the_report_into_the_manifest_and_results(tmp_path):
    from client.client_app import SiteClient
    from client.site import SiteConfig
    from coordinator.report import build_results
    from coordinator.run_result import RunResult, SiteRows
    from coordinator.server_app import image_report
    from sangsaeng.protocol import PHASE_PROFILE, ConfigKey, ReplyKey
    from tests.factories import image_task

    spec = image_task("solar-cell-inspection")
    manifest = image_manifest(tmp_path / "site", 60, seed=8)
    (tmp_path / "site" / "cell002.png").write_bytes(b"")
    rgb = np.stack([np.asarray(Image.open(tmp_path / "site" / "cell003.png"))] * 3, axis=-1)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "site" / "cell003.png")
    site = SiteConfig(name="plant-a", data_path=manifest)
    props = SiteClient(site).get_properties({ConfigKey.PHASE: PHASE_PROFILE, ConfigKey.TASK: spec.to_json()})

    assert props[ReplyKey.IMAGES] == 60 and props[ReplyKey.IMAGES_SKIPPED] == 1
    first = json.loads(str(props[ReplyKey.IMAGES_FIRST_SKIPPED]))
    assert len(first) == 1 and "data row 3: image file is empty (0 bytes)" in first[0] and "cell002.png" in first[0]
    assert json.loads(str(props[ReplyKey.IMAGES_CONVERTED])) == {"RGB": 1}
    # No pixel, no thumbnail: the reply's other keys are the tabular ones.
    image_keys = {ReplyKey.IMAGES, ReplyKey.IMAGES_SKIPPED, ReplyKey.IMAGES_FIRST_SKIPPED, ReplyKey.IMAGES_CONVERTED}
    assert set(props) == {ReplyKey.SITE, ReplyKey.PROFILE, ReplyKey.N_TRAIN, ReplyKey.N_TEST, *image_keys}

    report = image_report(props)
    assert report == {"images": 60, "skipped": 1, "first_skipped": first, "converted": {"RGB": 1}}
    garbled = image_report({**props, ReplyKey.IMAGES_FIRST_SKIPPED: "[not json", ReplyKey.IMAGES_CONVERTED: "7"})
    assert garbled["skipped"] == 1 and garbled["first_skipped"] == [] and garbled["converted"] == {}
    from models.scaler import FederatedScaler, SiteProfile

    scaler = FederatedScaler.combine([SiteProfile.from_json(str(props[ReplyKey.PROFILE]))], spec)
    result = RunResult(
        run_id="r1", status="completed", error=None, task=spec, scaler=scaler, weights=None, rounds=[],
        sites={"plant-a": SiteRows(1, 47, 12, images=report), "plant-b": SiteRows(2, 50, 10, images=None)},
        excluded_sites={}, initial_metrics={}, privacy_report=None, privacy_report_path=None, config={},
    )  # fmt: skip
    assert build_results(result)["site_images"] == {"plant-a": report}


def test_a_tabular_profile_reply_has_no_image_keys(tmp_path):
    from client.client_app import SiteClient
    from client.site import SiteConfig
    from models.datasets import sample_path
    from models.tasks import get_task
    from sangsaeng.protocol import PHASE_PROFILE, ConfigKey, ReplyKey

    data = tmp_path / "ai4i.csv"
    pd.read_csv(sample_path("predictive-maintenance")).head(200).to_csv(data, index=False)
    config: dict = {ConfigKey.PHASE: PHASE_PROFILE, ConfigKey.TASK: get_task("predictive-maintenance").to_json()}
    props = SiteClient(SiteConfig(name="plant-t", data_path=data)).get_properties(config)
    assert ReplyKey.IMAGES not in props and ReplyKey.PROFILE in props


def test_the_model_card_states_size_channels_classes_and_the_normalisation(cell_model):
    path, spec, scaler, _ = cell_model
    described = describe_inputs(read_artifact(path.read_bytes()))
    assert list(described["image"]["size"]) == [12, 16] and described["image"]["channels"] == 1
    assert described["classes"] == ["0", "1", "2", "3"]
    norm = described["normalisation"]
    assert norm["pixel_mean"] == pytest.approx(list(scaler.pixel_mean)) and len(norm["pixel_std"]) == 1
    assert 0 < norm["pixel_mean"][0] < 1 and norm["pixel_std"][0] > 0
    assert "/ 255" in norm["scale"]


def test_pixels_of_a_batch_are_those_of_the_loaded_frame(cell_model, tmp_path):
    """`image_rows` (what predict decodes batch by batch) gives the pixels `attach_images` loads."""
    from models.images import image_rows

    _, spec, *_ = cell_model
    manifest = image_manifest(tmp_path / "s", 5, seed=9)
    frame = load_site_data(manifest, spec)
    rows = list(image_rows(pd.read_csv(manifest)["image"].tolist(), spec.image, folder=manifest.parent,
                           source=str(manifest)))  # fmt: skip
    assert frame.attrs[IMAGE_REPORT]["skipped"] == 0
    for row, pixels in zip(rows, frame[PIXELS], strict=True):
        np.testing.assert_array_equal(row.pixels, pixels)


def test_a_manifest_without_the_path_column_is_refused_by_name(cell_model, tmp_path):
    path, *_ = cell_model
    manifest = image_manifest(tmp_path / "lot", 4, seed=10)
    pd.read_csv(manifest).rename(columns={"image": "file"}).to_csv(manifest, index=False)
    done = runner.invoke(app, ["client", "predict", str(path), str(manifest)])
    assert done.exit_code == 2 and "image" in said(done) and str(manifest) in said(done)
    assert not (tmp_path / "lot" / "manifest.scores.csv").exists()


def test_within_folder_refuses_a_path_leaving_the_folder_at_predict_too(tmp_path):
    import dataclasses

    from client.predict_images import score_images

    spec, scaler, net, _ = scored_image_model(tmp_path / "train")
    assert spec.image is not None
    strict = dataclasses.replace(spec, image=dataclasses.replace(spec.image, within_folder=True))
    manifest = image_manifest(tmp_path / "lot", 4, seed=11)
    listed = pd.read_csv(manifest)
    listed.loc[2, "image"] = "../train/cell000.png"  # exists, but outside the manifest's folder
    listed.to_csv(manifest, index=False)
    scored = score_images(net, manifest, None, spec=strict, scaler=scaler)
    assert scored.scored == 3 and scored.skipped == 1
    assert "leads outside the manifest's folder" in scored.first_skipped[0]

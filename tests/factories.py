"""Factories shared by the privacy and portal tests."""

from __future__ import annotations

from privacy.accounting import epsilon_of


def dp_manifest(
    run_id: str = "abc123", sites: tuple[str, ...] = ("plant-a",), rounds: int = 3, *, profile: bool = False,
    evaluation: bool = False,
) -> dict:  # fmt: skip
    """A run manifest whose per-round DP records are consistent with the RDP accountant.

    With `profile`, every site first released a DP data profile (one Gaussian step of noise 12
    over 11 blocks), recorded in ``profile_dp`` and composed into the rounds' epsilons. With
    `evaluation`, every site released a DP evaluation histogram after each round (one Gaussian
    step of noise 30, sensitivity 1), recorded in the round's ``dp_evaluation``.
    """
    records, history = [], []
    profile_dp = {}
    if profile:
        history.append((12.0, 1.0, 1))
        mechanism = {
            "mechanism": "profile", "noise_multiplier": 12.0, "sample_rate": 1.0, "steps": 1,
            "sensitivity": 11**0.5, "noise_std": 12.0 * 11**0.5, "covers": ["count"] + [f"b{i}" for i in range(10)],
            "bins": 64, "share_of_target": 0.1, "epsilon": epsilon_of(history, delta=1e-5), "delta": 1e-5,
            "accountant": "rdp", "budget_epsilon": 4.0, "records": 2000, "prior_history": [],
        }  # fmt: skip
        profile_dp = {site: dict(mechanism) for site in sites}
    for r in range(1, rounds + 1):
        history.append((1.2, 0.05, 40))
        dp = {
            "epsilon": epsilon_of(history, delta=1e-5), "noise_multiplier": 1.2, "sample_rate": 0.05, "steps": 40,
            "delta": 1e-5, "max_grad_norm": 1.0, "budget_epsilon": 4.0, "accountant": "rdp", "records": 2000,
            "prior_history": [],
        }  # fmt: skip
        records.append({"round": r, "dp": {site: dict(dp) for site in sites}, "failures": []})
        if evaluation:
            history.append((30.0, 1.0, 1))
            mech = {
                "mechanism": "evaluation", "round": r, "noise_multiplier": 30.0, "sample_rate": 1.0, "steps": 1,
                "sensitivity": 1.0, "noise_std": 30.0, "covers": ["scores by label"], "bins": 20, "clip": None,
                "evaluations": rounds, "share_of_target": 0.1, "epsilon": epsilon_of(history, delta=1e-5),
                "delta": 1e-5, "accountant": "rdp", "budget_epsilon": 4.0, "records": 2000, "prior_history": [],
            }  # fmt: skip
            records[-1]["dp_evaluation"] = {site: dict(mech) for site in sites}
            records[-1]["per_site"] = {site: {"roc_auc": 0.9} for site in sites}
    return {
        "run_id": run_id,
        "task": {"name": "predictive-maintenance"},
        "config": {"dp_epsilon": 3.0},
        "rounds": records,
        **({"profile_dp": profile_dp} if profile_dp else {}),
    }


def scored_model(task: str, *, hidden: tuple[int, ...] = (8,), engines: int = 6, rows: int = 2000, seed: int = 0):
    """A real, untrained model of a built-in task, its scaler and its real metrics on the task's sample.

    Multiclass (`failure-mode`): an MLP with one output per class, scored with `recall_<class>`
    among its metrics. Sequence (`turbofan-rul`): a TCN over `engines` whole engines' windows,
    scored with the remaining-useful-life metrics. Returns (spec, scaler, model, metrics).
    """
    import pandas as pd

    from models.datasets import SAMPLES, sample_path
    from models.nets import build_model
    from models.scaler import FederatedScaler
    from models.schema import validate_frame
    from models.tasks import get_task
    from models.training import evaluate_model, last_windows, prepare

    spec = get_task(task)
    raw = pd.read_csv(sample_path(task))
    if spec.sequence is not None:  # whole groups: a window never starts in the middle of an engine
        raw = raw[raw[spec.sequence.group].isin(sorted(raw[spec.sequence.group].unique())[:engines])]
    else:
        raw = raw.head(rows)
    frame = validate_frame(raw, spec, source=SAMPLES[task].filename)
    scaler = FederatedScaler.fit_pooled(frame, spec)
    name = "tcn" if spec.sequence is not None else "mlp"
    model = build_model(scaler.n_inputs, name=name, hidden=hidden, outputs=scaler.n_outputs, seed=seed)
    x, y = prepare(frame, spec, scaler)
    _, metrics = evaluate_model(model, x, y, spec=spec, scaler=scaler, last=last_windows(frame, spec))
    return spec, scaler, model, metrics


IMAGE_TASK = "solar-cell-defect-level"  # the built-in 4-level image task, on small generated images


def image_manifest(folder, n: int = 24, *, seed: int = 0, size: tuple[int, int] = (14, 18)):
    """`n` generated grayscale PNGs under `folder` (brighter for higher levels) and their manifest.

    Returns the manifest's path; its columns are the built-in solar-cell tasks' (image, the
    4-level label, the binary label, cell type).
    """
    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    levels = np.arange(n) % 4
    for i, level in enumerate(levels):
        pixels = np.clip(rng.normal(60 + 40 * level, 25, size), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"cell{i:03d}.png")
    frame = pd.DataFrame({
        "image": [f"cell{i:03d}.png" for i in range(n)], "defect_level": levels.astype(str),
        "defective": (levels >= 2).astype(int), "cell_type": np.where(np.arange(n) % 2, "mono", "poly"),
    })  # fmt: skip
    frame.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def image_task(name: str = IMAGE_TASK, *, size: tuple[int, int] = (12, 16)):
    """A built-in solar-cell task (by name) at a small image size, so a cnn runs in milliseconds."""
    import dataclasses

    from models.tasks import get_task

    spec = get_task(name)
    assert spec.image is not None
    return dataclasses.replace(spec, image=dataclasses.replace(spec.image, size=size))


def scored_image_model(folder, *, name: str = IMAGE_TASK, hidden: tuple[int, ...] = (8, 8), seed: int = 0):
    """A real, untrained cnn of an image task on generated images, its scaler and its real metrics.

    Returns (spec, scaler, model, metrics), as `scored_model` does for the other kinds.
    """
    from models.nets import build_model
    from models.scaler import FederatedScaler
    from models.schema import load_site_data
    from models.training import evaluate_model, prepare

    spec = image_task(name)
    frame = load_site_data(image_manifest(folder, seed=seed), spec)
    scaler = FederatedScaler.fit_pooled(frame, spec)
    model = build_model(scaler.n_inputs, name="cnn", hidden=hidden, outputs=scaler.n_outputs, seed=seed)
    x, y = prepare(frame, spec, scaler)
    _, metrics = evaluate_model(model, x, y, spec=spec, scaler=scaler)
    return spec, scaler, model, metrics

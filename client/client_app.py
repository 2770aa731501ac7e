"""The supplier's Flower ClientApp.

Answers three instructions from the coordinator, each on the site's own rows only:

- *profile* (legacy ``get_properties``): validate the export, return aggregate statistics
  for federated normalisation (`models.scaler.SiteProfile`);
- *fit*: train the global model on the site's training split;
- *evaluate*: score the global model on the site's fixed held-out split; once after the last
  round (phase ``membership``), attack the final model with its training rows against its
  held-out rows instead and keep the figure in its ledger (`client.membership`); once per run
  in deployment (phase ``local_only``), a local-only model's score (`client.local_only`).

A bad export or an unusable task becomes an error reply naming the file, column and problem
(`site_errors_mod`), never a crash of the node.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from flwr.app import Context, Error, Message
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import Config, NDArrays, Scalar

from client.contribution import coalition_counts, unpack_models
from client.evaluation import evaluation_reply, released_mechanism
from client.local_only import local_only_config, local_only_reply
from client.site import SiteConfig
from models.datasets import holdout_split
from models.defaults import TRAINING_DEFAULTS
from models.errors import SiteDataError, TaskSpecError
from models.images import IMAGE_REPORT
from models.nets import build_model, get_weights, set_weights
from models.scaler import FederatedScaler, SiteProfile, profile_site
from models.schema import load_site_data
from models.tasks import TaskSpec
from models.training import TrainConfig, prepare, train_local
from privacy.dp_sgd import train_private
from privacy.errors import BudgetExhausted, PolicyError
from privacy.ledger import PrivacyLedger
from privacy.policy import DpRequest
from privacy.profile import profile_records, release_profile
from sangsaeng.errors import SangsaengError
from sangsaeng.protocol import (
    PHASE_CONTRIBUTION,
    PHASE_LOCAL_ONLY,
    PHASE_MEMBERSHIP,
    PHASE_PROFILE,
    ConfigKey,
    ErrorCode,
    ReplyKey,
)

__all__ = ["SiteClient", "make_client_app", "site_errors_mod", "app"]


@dataclass(frozen=True)
class SiteData:
    """A site's validated rows, split once into training and held-out parts."""

    train: pd.DataFrame
    test: pd.DataFrame
    profile: SiteProfile
    images: dict | None = None  # an image task's report (models.images.IMAGE_REPORT) of the whole manifest


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, spec_json: str, fraction: float, seed: int) -> SiteData:
    # mtime is part of the key so a corrected export is picked up without a restart.
    del mtime_ns
    spec = TaskSpec.from_json(spec_json)
    frame = load_site_data(path, spec)
    if len(frame) < 10:
        raise SiteDataError(path, f"only {len(frame)} valid rows; a site needs at least 10")
    train, test = holdout_split(frame, spec, test_fraction=fraction, seed=seed, source=path)
    return SiteData(train, test, profile_site(train, spec), frame.attrs.get(IMAGE_REPORT))


def load_site(site: SiteConfig, spec: TaskSpec) -> SiteData:
    """Read, validate and split the site's export (cached while the file is unchanged)."""
    path = site.data_path
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = -1  # let the loader raise its clear "file not found"
    return _load(str(path), mtime, spec.to_json(), site.holdout_fraction, site.holdout_seed)


def _spec_from(config: dict) -> TaskSpec:
    try:
        return TaskSpec.from_json(str(config[ConfigKey.TASK]))
    except KeyError:
        raise TaskSpecError("the coordinator sent no task definition") from None


def _dp_request(config: dict) -> DpRequest:
    target = float(config.get(ConfigKey.DP_EPSILON, 0.0) or 0.0)
    return DpRequest(
        run_id=str(config.get(ConfigKey.RUN_ID, "unnamed-run")),
        target_epsilon=target if target > 0 else None,
        max_grad_norm=float(config.get(ConfigKey.DP_MAX_GRAD_NORM, TRAINING_DEFAULTS.dp_max_grad_norm)),
        num_rounds=int(config.get(ConfigKey.NUM_ROUNDS, 1)),
        evaluate_every=int(config.get(ConfigKey.EVALUATE_EVERY, 1)),
    )


def _hidden(config: dict) -> tuple[int, ...]:
    if ConfigKey.HIDDEN not in config:
        return TRAINING_DEFAULTS.hidden
    return tuple(int(h) for h in str(config[ConfigKey.HIDDEN]).split(",") if h)


def _image_reply(report: dict | None) -> dict[str, Scalar]:
    """An image task's report as profile reply keys (nothing for a tabular task): counts and file names only."""
    if report is None:
        return {}
    return {
        ReplyKey.IMAGES: int(report["images"]),
        ReplyKey.IMAGES_SKIPPED: int(report["skipped"]),
        ReplyKey.IMAGES_FIRST_SKIPPED: json.dumps(list(report["first_skipped"])),
        ReplyKey.IMAGES_CONVERTED: json.dumps(dict(report.get("converted", {}))),
    }


def _train_config(config: dict) -> TrainConfig:
    """The round's training settings as the coordinator sent them; what it leaves out falls back on the defaults."""
    default = TRAINING_DEFAULTS
    return TrainConfig(
        epochs=int(config.get(ConfigKey.EPOCHS, default.local_epochs)),
        batch_size=int(config.get(ConfigKey.BATCH_SIZE, default.batch_size)),
        lr=float(config.get(ConfigKey.LR, default.lr)),
        weight_decay=float(config.get(ConfigKey.WEIGHT_DECAY, default.weight_decay)),
        proximal_mu=float(config.get(ConfigKey.PROXIMAL_MU, 0.0)),  # sent by FedProx only
        class_weight=str(config.get(ConfigKey.CLASS_WEIGHT, default.class_weight)),
        # Different but reproducible shuffles per site and round.
        seed=int(config.get(ConfigKey.SEED, 0)) * 7919 + int(config.get(ConfigKey.ROUND, 0)),
    )


class SiteClient(NumPyClient):
    """One supplier site's answers to the coordinator."""

    def __init__(self, site: SiteConfig):
        self.site = site

    def _model(
        self, config: dict, parameters: Sequence[np.ndarray]
    ) -> tuple[TaskSpec, FederatedScaler, torch.nn.Module]:
        spec = _spec_from(config)
        scaler = FederatedScaler.from_json(str(config[ConfigKey.SCALER]))
        model = build_model(
            scaler.n_inputs,
            name=str(config.get(ConfigKey.MODEL, TRAINING_DEFAULTS.model)),
            hidden=_hidden(config),
            outputs=scaler.n_outputs,
        )
        set_weights(model, parameters)
        return spec, scaler, model

    def get_properties(self, config: Config) -> dict[str, Scalar]:
        """The site's name; in the profile phase also its data's aggregate statistics (no rows)."""
        if config.get(ConfigKey.PHASE) != PHASE_PROFILE:
            return {ReplyKey.SITE: self.site.name}
        spec = _spec_from(config)
        data = load_site(self.site, spec)
        reply: dict[str, Scalar] = {
            ReplyKey.SITE: self.site.name,
            ReplyKey.PROFILE: data.profile.to_json(),
            ReplyKey.N_TRAIN: len(data.train),
            ReplyKey.N_TEST: len(data.test),
            **_image_reply(data.images),
        }
        # Under DP the profile counts DP-SGD's records (a sequence task's windows): one unit, one delta.
        records = len(profile_records(data.train, spec))
        ledger = PrivacyLedger(self.site.ledger_file, self.site.name)
        plan = ledger.plan_profile(self.site.privacy, _dp_request(config), records=records)
        if plan is not None:
            entry = plan.released
            if entry is None:
                profile, mechanism = release_profile(data.train, spec, noise_multiplier=plan.noise_multiplier)
                entry = ledger.record_profile(plan, mechanism=mechanism.to_dict(), profile=profile.to_json())
            reply[ReplyKey.PROFILE] = str(entry["profile"])
            reply[ReplyKey.DP_PROFILE] = released_mechanism(entry, plan, records=records,
                                                            omit=("profile", "run_id", "round"))  # fmt: skip
        return reply

    def fit(self, parameters: NDArrays, config: Config) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Train the global model on the site's training split (with DP-SGD if asked); returns the update."""
        spec, scaler, model = self._model(config, parameters)
        data = load_site(self.site, spec)
        x, y = prepare(data.train, spec, scaler)
        train_config = _train_config(config)
        ledger = PrivacyLedger(self.site.ledger_file, self.site.name)
        plan = ledger.plan_round(
            self.site.privacy, _dp_request(config), records=len(x),
            batch_size=train_config.batch_size, epochs=train_config.epochs,
            server_round=int(config.get(ConfigKey.ROUND, 0)) or None,
        )  # fmt: skip
        if plan is None:
            loss = train_local(model, x, y, spec=spec, scaler=scaler, config=train_config)
            return get_weights(model), len(x), {ReplyKey.SITE: self.site.name, ReplyKey.TRAIN_LOSS: loss}
        loss, steps = train_private(
            model, x, y, spec=spec, scaler=scaler, config=train_config,
            noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
        )  # fmt: skip
        epsilon = ledger.record_round(plan, server_round=int(config.get(ConfigKey.ROUND, 0)), steps=steps)
        metrics: dict[str, Scalar] = {
            ReplyKey.SITE: self.site.name,
            ReplyKey.TRAIN_LOSS: loss,
            ReplyKey.DP_EPSILON: epsilon,
            ReplyKey.DP_NOISE: plan.noise_multiplier,
            ReplyKey.DP_SAMPLE_RATE: plan.sample_rate,
            ReplyKey.DP_STEPS: steps,
            ReplyKey.DP_DELTA: plan.delta,
            ReplyKey.DP_MAX_GRAD_NORM: plan.max_grad_norm,
            ReplyKey.DP_BUDGET: plan.budget_epsilon,
            ReplyKey.DP_ACCOUNTANT: plan.accountant,
            ReplyKey.DP_RECORDS: len(x),
            ReplyKey.DP_PRIOR: json.dumps([list(p) for p in plan.prior]),
            ReplyKey.DP_RUN_RELEASES: json.dumps(ledger.run_releases(plan.run_id)),
        }
        return get_weights(model), len(x), metrics

    def evaluate(self, parameters: NDArrays, config: Config) -> tuple[float, int, dict[str, Scalar]]:
        """Score the global model on the site's held-out split; the reply is a histogram (noised under DP).

        A round's coalition models (contribution scores, `client.contribution`) are scored here too,
        and, in the membership phase after the last round, the final model's privacy (`privacy.membership`).
        """
        if config.get(ConfigKey.PHASE) == PHASE_CONTRIBUTION:
            return self._coalition_counts(parameters, config)
        if config.get(ConfigKey.PHASE) == PHASE_MEMBERSHIP:
            return self._membership(parameters, config)
        if config.get(ConfigKey.PHASE) == PHASE_LOCAL_ONLY:
            return self._local_only(parameters, config)
        spec, scaler, model = self._model(config, parameters)
        data = load_site(self.site, spec)
        return evaluation_reply(
            self.site, spec=spec, scaler=scaler, model=model, train=data.train, test=data.test,
            request=_dp_request(config), server_round=int(config.get(ConfigKey.ROUND, 0)),
        )  # fmt: skip

    def _local_only(self, parameters: NDArrays, config: Config) -> tuple[float, int, dict[str, Scalar]]:
        """ "Your line alone": the run's initial model trained on this site's rows only, its held-out histogram."""
        spec, scaler, model = self._model(config, parameters)
        data = load_site(self.site, spec)
        train_config = local_only_config(_train_config(config), num_rounds=int(config.get(ConfigKey.NUM_ROUNDS, 1)))
        return local_only_reply(
            self.site, spec=spec, scaler=scaler, model=model, train=data.train, test=data.test, config=train_config,
            request=_dp_request(config),
        )  # fmt: skip

    def _coalition_counts(self, parameters: NDArrays, config: Config) -> tuple[float, int, dict[str, Scalar]]:
        """Contribution scores: each packed coalition model's metric counts on the held-out split (no rows)."""
        models = unpack_models(parameters, int(config.get(ConfigKey.COALITIONS, 1)))
        spec, scaler, model = self._model(config, models[0])
        x, y = prepare(load_site(self.site, spec).test, spec, scaler)
        counts = coalition_counts(model, models, x, y, spec=spec, scaler=scaler)
        return 0.0, len(x), {ReplyKey.SITE: self.site.name, ReplyKey.COALITION_COUNTS: counts}

    def _membership(self, parameters: NDArrays, config: Config) -> tuple[float, int, dict[str, Scalar]]:
        """The membership-inference check of the final model, kept in the ledger; only its figures go back."""
        from client.membership import measure_membership

        spec, scaler, model = self._model(config, parameters)
        data = load_site(self.site, spec)
        result = measure_membership(
            model, data.train, data.test, spec=spec, scaler=scaler, seed=int(config.get(ConfigKey.SEED, 0))
        ).to_dict()
        PrivacyLedger(self.site.ledger_file, self.site.name).record_membership(_dp_request(config).run_id, result)
        # The loss slot carries the attack's AUC: Flower's evaluate reply needs a float there.
        reply: dict[str, Scalar] = {ReplyKey.SITE: self.site.name, ReplyKey.MEMBERSHIP: json.dumps(result)}
        return result["auc"], result["n_train"], reply


_ERROR_CODES = {
    TaskSpecError: ErrorCode.TASK_SPEC,
    BudgetExhausted: ErrorCode.BUDGET_EXHAUSTED,
    PolicyError: ErrorCode.PRIVACY_POLICY,
}


def site_errors_mod(sites: Sequence[SiteConfig] | None = None) -> Mod:
    """A mod that turns a site's known problems into an error reply naming the site.

    The coordinator reports the reply and leaves the site out; the node keeps running.
    """

    def mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        try:
            return call_next(msg, context)
        except SangsaengError as exc:
            try:
                name = _site_for(context, sites).name
            except SangsaengError:
                name = f"node {context.node_id}"
            code = _ERROR_CODES.get(type(exc), ErrorCode.SITE_DATA)
            return Message(Error(code=code, reason=f"site '{name}': {exc}"), reply_to=msg)

    return mod


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower's `secaggplus_mod` for SecAgg+ rounds; other messages go straight through.

    (`secaggplus_mod` itself expects SecAgg+ settings in every training message.)
    """
    if "secaggplus_configs" in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def _site_for(context: Context, sites: Sequence[SiteConfig] | None) -> SiteConfig:
    if sites is not None and "partition-id" in context.node_config:
        return sites[int(context.node_config["partition-id"])]
    return SiteConfig.from_node_config(dict(context.node_config))


def make_client_app(sites: Sequence[SiteConfig] | None = None, *, extra_mods: Sequence[Mod] = ()) -> ClientApp:
    """The ClientApp; in simulation `sites[partition-id]` gives each virtual node its site.

    In deployment each SuperNode names its own site with ``--node-config``. Flower's
    `secaggplus_mod` takes part in secure aggregation when the coordinator runs SecAgg+ and
    passes every other message through untouched. `extra_mods` run innermost (test tools such
    as `client.contribution.misbehaving_mod`, and the poisoning attacker of `bench.attacks`).
    """

    def client_fn(context: Context):
        site = _site_for(context, sites)
        torch.set_num_threads(site.torch_threads)
        return SiteClient(site).to_client()

    return ClientApp(client_fn=client_fn, mods=[site_errors_mod(sites), secure_aggregation_mod, *extra_mods])


app = make_client_app()

"""The wire protocol between the coordinator and a supplier site: message keys and error codes.

Both sides of a Flower message import these names, so a key is spelled once:

- `ConfigKey`: the config the coordinator's ServerApp sends with each instruction;
- `ReplyKey`: the properties and metrics a site's ClientApp sends back;
- `ErrorCode`: the codes of the error replies a site sends instead of a result (a site's
  known problems, and its refusal of a run whose bundle is not the code it installed).

Flower's own error codes are below 100; ours start at 1000.
"""

from __future__ import annotations

__all__ = [
    "ConfigKey", "ReplyKey", "ErrorCode", "PHASE_PROFILE", "PHASE_CONTRIBUTION", "PHASE_MEMBERSHIP", "PHASE_LOCAL_ONLY",
]  # fmt: skip

PHASE_PROFILE = "profile"  # the value of ConfigKey.PHASE in the profile (statistics) round
PHASE_CONTRIBUTION = "contribution"  # ConfigKey.PHASE of the batched coalition evaluation (issue 16)
# The value of ConfigKey.PHASE in the one evaluate message after the last round that asks each
# site for its membership-inference check of the final model (privacy.membership).
PHASE_MEMBERSHIP = "membership"
# ConfigKey.PHASE of the one request after the last round: train a local-only model, reply with its histogram.
PHASE_LOCAL_ONLY = "local_only"


class ConfigKey:
    """Keys of the config the coordinator sends with each instruction."""

    PHASE = "sangsaeng.phase"
    TASK = "sangsaeng.task"  # TaskSpec as JSON
    SCALER = "sangsaeng.scaler"  # FederatedScaler as JSON
    ROUND = "sangsaeng.round"
    EPOCHS = "sangsaeng.epochs"
    BATCH_SIZE = "sangsaeng.batch_size"
    LR = "sangsaeng.lr"
    WEIGHT_DECAY = "sangsaeng.weight_decay"
    SEED = "sangsaeng.seed"
    MODEL = "sangsaeng.model"  # architecture name (models.architectures)
    HIDDEN = "sangsaeng.hidden"  # comma-separated layer widths
    CLASS_WEIGHT = "sangsaeng.class_weight"
    PROXIMAL_MU = "proximal_mu"  # set by Flower's FedProx strategy
    RUN_ID = "sangsaeng.run_id"
    NUM_ROUNDS = "sangsaeng.num_rounds"  # planned rounds: DP noise is calibrated for the whole run
    DP_EPSILON = "sangsaeng.dp.target_epsilon"  # 0 or absent: no DP requested
    DP_MAX_GRAD_NORM = "sangsaeng.dp.max_grad_norm"
    # Contribution scores: how many coalition models the evaluate message packs (equal slices).
    COALITIONS = "sangsaeng.contribution.coalitions"
    EVALUATE_EVERY = "sangsaeng.evaluate_every"  # evaluate every k-th round and the last (0: the last only)


class ReplyKey:
    """Keys of the properties and metrics a site sends back."""

    SITE = "site"
    PROFILE = "profile"
    N_TRAIN = "n_train"
    N_TEST = "n_test"
    TRAIN_LOSS = "train_loss"
    # Record-level DP of the round, as the site accounted it (see privacy.ledger).
    DP_EPSILON = "dp_epsilon"  # cumulative after this round
    DP_NOISE = "dp_noise_multiplier"
    DP_SAMPLE_RATE = "dp_sample_rate"
    DP_STEPS = "dp_steps"
    DP_DELTA = "dp_delta"
    DP_MAX_GRAD_NORM = "dp_max_grad_norm"
    DP_BUDGET = "dp_budget_epsilon"
    DP_ACCOUNTANT = "dp_accountant"
    DP_RECORDS = "dp_records"
    DP_PRIOR = "dp_prior_history"  # JSON list of earlier (noise, rate, steps) on the same data
    # JSON list of this run's training rounds and evaluation releases so far, as the site's ledger recorded
    # them (privacy.ledger.PrivacyLedger.run_releases): a release whose own reply was lost arrives with the next.
    DP_RUN_RELEASES = "dp_run_releases"
    # The DP data profile's mechanism (privacy.profile), JSON; absent when the profile is exact.
    DP_PROFILE = "dp_profile"
    # The evaluation reply: the held-out histogram (models.histogram, JSON), and under DP its mechanism
    # (privacy.evaluation, JSON).
    EVAL_HISTOGRAM = "eval_histogram"
    DP_EVALUATION = "dp_evaluation"
    # The local-only model's reply under DP (client.local_only): its DP-SGD stretch and evaluation release, JSON.
    DP_LOCAL_ONLY = "dp_local_only"
    # Image tasks, in the profile reply: the site's image report (models.images.IMAGE_REPORT).
    IMAGES = "images"  # manifest rows (images) the site read
    IMAGES_SKIPPED = "images_skipped"  # bad images skipped
    IMAGES_FIRST_SKIPPED = "images_first_skipped"  # JSON list: the first ten, "data row N: ... <file>"
    IMAGES_CONVERTED = "images_converted"  # JSON object: images whose channels were converted, by source mode
    # The batched coalition evaluation: JSON list, per model, of its metric counts (models.metric_counts).
    COALITION_COUNTS = "coalition_counts"
    # The membership-inference check's figures (privacy.membership.MembershipResult.to_dict), JSON.
    MEMBERSHIP = "membership_inference"


class ErrorCode:
    """Codes of error replies a site sends instead of a result (Flower's own codes are < 100)."""

    SITE_DATA = 1001  # the site's export does not fit the task schema
    TASK_SPEC = 1002  # the task the coordinator sent cannot be used
    BUDGET_EXHAUSTED = 1003  # the round would take the site over its own privacy budget
    PRIVACY_POLICY = 1004  # the site's privacy policy cannot be honoured
    REFUSED = 1100  # the run's bundle is not the code this site installed (`client start` refuses it)

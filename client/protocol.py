"""Message keys and error codes shared by the coordinator and the supplier client."""

from __future__ import annotations

__all__ = ["ConfigKey", "ReplyKey", "ErrorCode", "PHASE_PROFILE"]

PHASE_PROFILE = "profile"


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
    HIDDEN = "sangsaeng.hidden"  # comma-separated layer widths
    PROXIMAL_MU = "proximal_mu"  # set by Flower's FedProx strategy


class ReplyKey:
    """Keys of the properties and metrics a site sends back."""

    SITE = "site"
    PROFILE = "profile"
    N_TRAIN = "n_train"
    N_TEST = "n_test"
    TRAIN_LOSS = "train_loss"


class ErrorCode:
    """Codes of error replies a site sends instead of a result (Flower's own codes are < 100)."""

    SITE_DATA = 1001  # the site's export does not fit the task schema
    TASK_SPEC = 1002  # the task the coordinator sent cannot be used

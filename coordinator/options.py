"""The training options of `sangsaeng demo`, `simulate` and `coordinator run`, declared once.

`TrainingOptions` is both the typed object a command receives and the declaration of its
command-line options: each field's annotation carries its ``typer.Option``. The decorator
`training_options` appends every field to a command's signature, so a simulated and a
deployed run take the same flags and turn them into the same `FederationConfig`::

    @app.command()
    @training_options
    def demo(task: str = "...", *, options: TrainingOptions) -> None:
        config = options.federation_config(get_task(task), out_dir=Path("out"))
"""

# No `from __future__ import annotations` here: typer reads the fields' annotations (and the
# `typer.Option` inside each) as objects, in the signature `training_options` builds.

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from coordinator.config import DP_TRAINING_DEFAULTS, STRATEGIES, FederationConfig, parse_hidden
from models.architectures import ARCHITECTURES
from models.defaults import TRAINING_DEFAULTS
from models.histogram import DEFAULT_RULE
from models.tasks import TaskSpec
from sangsaeng.paths import DEFAULT_KEY_DIR

__all__ = ["TrainingOptions", "training_options"]

_DP = DP_TRAINING_DEFAULTS
_PLAIN = TRAINING_DEFAULTS
_Command = TypeVar("_Command", bound=Callable[..., Any])


@dataclass(frozen=True)
class TrainingOptions:
    """How a run trains, as a user chooses it on the command line.

    None means "the default", which differs under DP-SGD (`FederationConfig.with_defaults`);
    the other defaults are `FederationConfig`'s own.
    """

    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")] = FederationConfig.num_rounds
    strategy: Annotated[
        str,
        typer.Option(
            help=f"Aggregation: {', '.join(STRATEGIES)}. fedmedian, fedtrimmedavg, krum, multikrum and bulyan "
            "resist a few poisoned updates (README, 'Poisoned suppliers')."
        ),
    ] = FederationConfig.strategy
    byzantine_sites: Annotated[
        int,
        typer.Option(
            min=0,
            help="krum, multikrum, bulyan: the poisoned sites to withstand (f); krum needs more than 2f + 2 "
            "sites per round, bulyan at least 4f + 3.",
        ),
    ] = FederationConfig.byzantine_sites
    multikrum_keep: Annotated[
        int,
        typer.Option(min=0, help="multikrum: the updates it averages (m); 0: each round's updates less f."),
    ] = FederationConfig.multikrum_keep
    local_epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Local epochs per round at each site (default {_PLAIN.local_epochs}; "
            f"{_DP['local_epochs']} with DP-SGD).",
        ),
    ] = None
    batch_size: Annotated[
        int | None,
        typer.Option(min=1, help=f"Local batch size (default {_PLAIN.batch_size}; {_DP['batch_size']} with DP-SGD)."),
    ] = None
    lr: Annotated[
        float | None,
        typer.Option(min=1e-6, help=f"Local learning rate (default {_PLAIN.lr:g}; {_DP['lr']:g} with DP-SGD)."),
    ] = None
    model: Annotated[
        str | None,
        typer.Option(
            help=f"Model: {', '.join(ARCHITECTURES)} (default {_PLAIN.model}; {_DP['model']} with DP-SGD, "
            "see docs/privacy.md)."
        ),
    ] = None
    hidden: Annotated[
        str | None,
        typer.Option(
            help=f"Hidden layer widths, e.g. 64,32, or 'none' (default {','.join(map(str, _PLAIN.hidden))}; "
            f"{','.join(map(str, _DP['hidden'])) or 'none'} with DP-SGD)."
        ),
    ] = None
    fraction_fit: Annotated[float, typer.Option(min=0.01, max=1.0, help="Fraction of sites per round.")] = (
        FederationConfig.fraction_fit
    )
    fraction_evaluate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Fraction of sites that evaluate the global model each evaluated round, the last one "
            "included (a fresh sample each round; 0: only the coordinator's held-out rows).",
        ),
    ] = FederationConfig.fraction_evaluate
    min_sites: Annotated[int, typer.Option(min=1, help="Fewest healthy sites a run accepts.")] = (
        FederationConfig.min_sites
    )
    seed: Annotated[int, typer.Option(help="Seed of splits, initial weights and shuffles.")] = FederationConfig.seed
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run recorded in --out from its last checkpoint.")
    ] = False
    dp_epsilon: Annotated[
        float | None,
        typer.Option(min=0.01, help="Record-level DP-SGD at every site; the per-site epsilon of the whole run."),
    ] = None
    dp_max_grad_norm: Annotated[
        float | None,
        typer.Option(
            min=1e-6,
            help=f"Per-sample gradient clipping norm of DP-SGD (default {_DP['dp_max_grad_norm']:g}).",
        ),
    ] = None
    central_dp_noise: Annotated[
        float | None, typer.Option(min=1e-6, help="Supplier-level DP at the coordinator: noise multiplier.")
    ] = None
    central_dp_clip: Annotated[
        float,
        typer.Option(
            min=1e-6, help="Supplier-level DP: clipping norm of each site's update (adaptive: its first value)."
        ),
    ] = FederationConfig.central_dp_clip
    central_dp_adaptive: Annotated[
        bool,
        typer.Option(
            "--central-dp-adaptive",
            help="Supplier-level DP: adapt the clipping norm every round to a quantile of the update norms "
            "(Andrew et al. 2021).",
        ),
    ] = False
    central_dp_quantile: Annotated[
        float, typer.Option(min=0.01, max=0.99, help="Adaptive clipping: the quantile of update norms to follow.")
    ] = FederationConfig.central_dp_quantile
    contribution_coalitions: Annotated[
        int,
        typer.Option(
            min=0,
            help="Contribution scores: coalition models the sites evaluate per round (every coalition up to "
            "log2 of it sites: exact Shapley per round; 0: data shares only). See docs/contribution.md.",
        ),
    ] = FederationConfig.contribution_coalitions
    evaluate_every: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Sites evaluate every k-th round and the last; 0: the last only (default 1; 0 with DP-SGD, "
            "where each evaluation is a noisy release charged to the sites' budgets).",
        ),
    ] = None
    operating_rule: Annotated[
        str,
        typer.Option(
            help="How the decision threshold is chosen from the merged held-out histograms: 'recall>=R' "
            "(catch at least R of the defects) or 'f1' (best F1)."
        ),
    ] = DEFAULT_RULE
    key_dir: Annotated[Path, typer.Option(help="The coordinator's signing key directory (created on first use).")] = (
        DEFAULT_KEY_DIR
    )
    membership_check: Annotated[
        bool,
        typer.Option(
            "--membership-check/--no-membership-check",
            help="After the last round each site attacks the final model with its training rows against its "
            "held-out rows and reports the attack's ROC-AUC (docs/privacy.md).",
        ),
    ] = FederationConfig.membership_check
    profile_sites: Annotated[
        int,
        typer.Option(
            min=0,
            help="Sites asked for their data profile before round 1 (the scaler's statistics): above it a seeded "
            "sample; the others join the rounds all the same, and are charged no DP profile. 0: every site.",
        ),
    ] = FederationConfig.profile_sites

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "TrainingOptions":
        """The options among a command's parsed parameters (other parameters are ignored)."""
        values = {f.name: params[f.name] for f in dataclasses.fields(cls) if f.name in params}
        if "key_dir" in values:
            values["key_dir"] = Path(values["key_dir"])  # click hands over text where typer has not converted it
        return cls(**values)

    def federation_config(self, task: TaskSpec, *, out_dir: Path, **settings: Any) -> FederationConfig:
        """The run's settings: these options, then ``settings`` (what only one command sets, e.g. ``secagg``).

        Raises ValueError naming the option when a value or a combination is refused.
        """
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["num_rounds"] = values.pop("rounds")
        values["hidden"] = parse_hidden(values["hidden"])
        return FederationConfig.with_defaults(task=task, out_dir=out_dir, **{**values, **settings})


def training_options(command: _Command) -> _Command:
    """Give ``command`` every `TrainingOptions` flag; it receives them as one ``options: TrainingOptions``.

    The flags are appended to the command's own parameters in the signature typer reads, so
    they are declared once here instead of once per command.
    """
    own = inspect.signature(command, eval_str=True)
    hints = get_type_hints(TrainingOptions, include_extras=True)
    shared = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in dataclasses.fields(TrainingOptions)
    ]
    kept = [p for name, p in own.parameters.items() if name != "options"]
    clash = {p.name for p in kept} & {p.name for p in shared}
    if clash:
        raise TypeError(f"{command.__name__} declares {sorted(clash)} itself; TrainingOptions declares them already")

    @functools.wraps(command)
    def with_options(**params: Any) -> Any:
        options = TrainingOptions.from_params(params)
        own_params = {name: value for name, value in params.items() if name not in hints}
        return command(**own_params, options=options)

    signature = own.replace(parameters=[*kept, *shared])
    with_options.__signature__ = signature  # type: ignore[attr-defined]  # read by inspect.signature (typer)
    with_options.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return with_options  # type: ignore[return-value]  # same command; typer reads the new __signature__

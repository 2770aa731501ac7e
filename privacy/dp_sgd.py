"""Record-level DP-SGD at a site with Opacus: per-sample clipping and Gaussian noise.

A fresh model is wrapped for each round (never a model wrapped twice), sampling is Poisson
as the accountant assumes, and the models carry no BatchNorm.

Every step has three parts: per-sample gradients, then Opacus' `DPOptimizer` (clip each
sample's gradient to ``max_grad_norm``, sum, add Gaussian noise of std ``noise_multiplier *
max_grad_norm``, divide by the expected batch size), then the optimiser's own update. The
optimiser and its noise generator always come from Opacus' `PrivacyEngine.make_private`. The
per-sample gradients come from one of two places:

- **"module"**: Opacus' `GradSampleModule`, which works for any model. This uses PyTorch's
  ExpandedWeights (``grad_sample_mode="ew"``). On the small tabular MLPs it was the fastest of
  Opacus' modes that materialise per-sample gradients: "hooks" was about 15 % slower,
  "functorch" 2x slower, and "ghost" clipping pays for a second backward pass.
- **"head"**: when a model's only trainable weights are those of its output layer (the additive
  piecewise-linear model that DP runs train by default), the per-sample gradients come from
  Opacus' own `nn.Linear` grad sampler. It is fed that layer's input, which the fixed
  encoding computes without weights, and dloss/dlogit. That is the computation Opacus' hooks
  do, without wrapping the model. On a model this small, the wrapper and its hooks cost more
  than the training step itself (bench/privacy.py). `tests/test_privacy.py` checks that both
  give the same per-sample gradients and the same trained weights, step for step.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.grad_sample.linear import compute_linear_grad_sample
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.scaler import FederatedScaler
from models.tasks import TaskSpec
from models.training import TrainConfig, loss_fn, targets_of

__all__ = ["GRAD_SAMPLE_MODE", "PerSample", "PrivateTraining", "make_private", "train_private"]

GRAD_SAMPLE_MODE = "ew"

PerSample = Literal["auto", "module", "head"]


@dataclass
class PrivateTraining:
    """One round's DP-SGD machinery, as `make_private` sets it up."""

    optimiser: DPOptimizer
    sample_rate: float  # Poisson: each record joins a batch independently with this probability
    batches: int  # batches per epoch
    per_sample: Literal["module", "head"]
    # (inputs, targets, criterion) -> loss; sets `grad_sample` on every trainable parameter.
    grad_samples: Callable[[torch.Tensor, torch.Tensor, nn.Module], torch.Tensor]
    module: nn.Module  # what to call for a forward pass: the GradSampleModule, or the model


def _trains_only_its_head(model: nn.Module) -> bool:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or not callable(getattr(model, "features", None)):
        return False
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    return trainable == {id(p) for p in head.parameters()}


def _head_grad_samples(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor, nn.Module], torch.Tensor]:
    """Per-sample gradients of a model whose only trainable layer is its output `nn.Linear`."""
    head: nn.Linear = model.head

    def grad_samples(inputs: torch.Tensor, targets: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            activations = model.features(inputs)  # no weights before the head: nothing to differentiate
        bias = None if head.bias is None else head.bias.detach()
        logits = nn.functional.linear(activations, head.weight.detach(), bias).squeeze(-1).requires_grad_()
        loss = criterion(logits, targets)
        (dlogits,) = torch.autograd.grad(loss, logits)
        # Opacus' hooks scale the backprops of a mean-reduced loss by the batch size, so that
        # each row is one sample's own gradient; the optimiser divides by the expected batch size.
        backprops = (dlogits * len(inputs)).unsqueeze(-1)
        for param, grad_sample in compute_linear_grad_sample(head, [activations], backprops).items():
            param.grad_sample = grad_sample
        return loss.detach()

    return grad_samples


def _module_grad_samples(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor, nn.Module], torch.Tensor]:
    """Per-sample gradients from Opacus' GradSampleModule (any model)."""

    def grad_samples(inputs: torch.Tensor, targets: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
        loss = criterion(module(inputs), targets)
        loss.backward()
        return loss.detach()

    return grad_samples


def make_private(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    spec: TaskSpec,
    scaler: FederatedScaler,
    config: TrainConfig,
    noise_multiplier: float,
    max_grad_norm: float,
    per_sample: PerSample = "auto",
) -> PrivateTraining:
    """Opacus' DP optimiser and Poisson sampling for one round, and where per-sample gradients come from.

    ``per_sample="auto"`` takes "head" where the model allows it, else "module".
    """
    if per_sample not in ("auto", "module", "head"):
        raise ValueError(f"unknown per-sample gradient source '{per_sample}' (choose auto, module or head)")
    fits_head = _trains_only_its_head(model)
    if per_sample == "head" and not fits_head:
        raise ValueError("per-sample gradients from the output layer need a model whose only trainable layer it is")
    chosen: Literal["module", "head"] = "module"
    if per_sample == "head" or (per_sample == "auto" and fits_head):
        chosen = "head"
    dataset = TensorDataset(torch.as_tensor(x, dtype=torch.float32), targets_of(y, spec, scaler))
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    with warnings.catch_warnings():
        # Opacus warns at every wrap that secure_mode (a CSPRNG for the noise) is off; the privacy
        # report states it once instead (privacy.report.MECHANISM).
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        engine = PrivacyEngine(accountant="rdp")  # the site's ledger does the accounting across rounds
        # The wrap also checks the model is fit for DP-SGD (no BatchNorm) whichever source is used.
        module, dp_optimiser, dp_loader = engine.make_private(
            module=model,
            optimizer=optimiser,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            noise_generator=generator,
            grad_sample_mode=GRAD_SAMPLE_MODE,
        )
    # The engine's own accountant would count this round alone; the site's ledger accounts the
    # whole run (privacy.ledger), so the per-step hook that feeds the engine's is dropped.
    dp_optimiser.attach_step_hook(None)
    if chosen == "head":
        grad_samples, forward = _head_grad_samples(model), model
    else:
        grad_samples, forward = _module_grad_samples(module), module
    return PrivateTraining(dp_optimiser, dp_loader.sample_rate, len(dp_loader), chosen, grad_samples, forward)


def train_private(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    spec: TaskSpec,
    scaler: FederatedScaler,
    config: TrainConfig,
    noise_multiplier: float,
    max_grad_norm: float,
    per_sample: PerSample = "auto",
) -> tuple[float, int]:
    """Train in place with DP-SGD; return (mean loss of the last epoch, optimiser steps taken)."""
    torch.manual_seed(config.seed)
    private = make_private(
        model, x, y, spec=spec, scaler=scaler, config=config,
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, per_sample=per_sample,
    )  # fmt: skip
    optimiser = private.optimiser
    criterion = loss_fn(spec, scaler, config.class_weight)
    inputs = torch.as_tensor(x, dtype=torch.float32)
    targets = targets_of(y, spec, scaler)
    # Poisson sampling exactly as Opacus' DPDataLoader draws it (each record joins a batch
    # independently with probability `sample_rate`, `batches` batches per epoch), but on the
    # tensors directly: the per-record DataLoader fetch cost more than the clipping.
    generator = torch.Generator().manual_seed(config.seed + 1)
    private.module.train()
    steps, last = 0, 0.0
    for _ in range(config.epochs):
        # The loss is summed as a tensor and read once per epoch: a float() per step is a sync
        # and a Python round trip that the tiny models notice.
        total, seen = torch.zeros(()), 0
        for _ in range(private.batches):
            steps += 1
            idx = (torch.rand(len(inputs), generator=generator) < private.sample_rate).nonzero().squeeze(1)
            optimiser.zero_grad(set_to_none=True)  # the optimiser sets each .grad from the clipped sum and noise
            if len(idx) == 0:
                # An empty Poisson batch is still a step of the mechanism: noise only, as Opacus
                # steps on an empty batch from its DPDataLoader.
                for param in optimiser.params:
                    param.grad_sample = torch.zeros((0, *param.shape))
            else:
                total += private.grad_samples(inputs[idx], targets[idx], criterion) * len(idx)
                seen += len(idx)
            optimiser.step()
        last = float(total) / max(seen, 1)
    return last, steps

"""Record-level DP-SGD at a site with Opacus: per-sample clipping and Gaussian noise.

A fresh model is wrapped for each round (never a model wrapped twice), sampling is Poisson
as the accountant assumes, and the models carry no BatchNorm.

Every step clips each sample's gradient to ``max_grad_norm``, sums, adds Gaussian noise of std
``noise_multiplier * max_grad_norm`` and divides by the expected batch size. Opacus'
`PrivacyEngine.make_private` sets up the optimiser that does this, and its noise generator.
How each sample's gradient is bounded depends on the model (``per_sample``):

- **"head"**: the model's only trained layer is its output `nn.Linear`. This is the additive
  piecewise-linear model that DP runs train by default. The per-sample gradients come from
  Opacus' own `nn.Linear` grad sampler, fed that layer's input (which the fixed encoding
  computes without weights) and dloss/dlogit. That is what Opacus' hooks compute, without
  wrapping the model: on a model this small the wrapper costs more than the training step
  (bench/privacy.py). Opacus' `DPOptimizer` clips, noises and steps.
- **"ghost"**: any other model. This is Opacus' ghost clipping (Li et al. 2022; Bu et al.
  2023). It computes each sample's gradient norm from layer inputs and output gradients, then
  runs a second backward pass on the loss reweighted by the clip factors. The per-sample
  gradients are never materialised, so the cost stays near 2-3x non-private training as the
  MLP widens (BENCHMARKS.md: 3.4x on the MLP 64-32, 2.3x on 256-128), where "ew" takes 4x and
  37x. On a single hidden layer of 16, "ew" was a little faster (3.0x against 3.9x).
- **"ew"**: Opacus' `GradSampleModule` on PyTorch's ExpandedWeights, materialising every
  per-sample gradient. It is the reference that tests compare the other two against, step by
  step.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.grad_sample.linear import compute_linear_grad_sample
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.images import ImageAugment
from models.scaler import FederatedScaler
from models.tasks import TaskSpec
from models.training import TrainConfig, augment_images, augmentation_of, loss_fn, targets_of

__all__ = ["PER_SAMPLE", "PerSample", "PrivateTraining", "make_private", "secret_seed", "train_private"]

PerSample = Literal["auto", "head", "ghost", "ew"]
PER_SAMPLE: tuple[str, ...] = get_args(PerSample)


@dataclass(kw_only=True)
class PrivateTraining:
    """One round's DP-SGD machinery, as `make_private` sets it up (keyword-only, so no rate is taken for another)."""

    optimiser: DPOptimizer  # Opacus': clips (except under ghost clipping, done in backward), noises, steps
    sample_rate: float  # Poisson: each record joins a batch independently with this probability
    batches: int  # batches per epoch
    per_sample: Literal["head", "ghost", "ew"]
    module: nn.Module  # what to call for a forward pass
    # (inputs, targets) -> loss of the batch; leaves on the parameters what the optimiser's step
    # takes: per-sample gradients (`grad_sample`), or under ghost clipping their clipped sum (`grad`).
    gradients: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def empty_batch(self) -> None:
        """An empty Poisson batch is still a step of the mechanism: noise only, as in Opacus."""
        for param in self.optimiser.params:
            if self.per_sample == "ghost":
                param.grad = torch.zeros_like(param)
            else:
                param.grad_sample = torch.zeros((0, *param.shape))


def _trains_only_its_head(model: nn.Module) -> bool:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear) or not callable(getattr(model, "features", None)):
        return False
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    return trainable == {id(p) for p in head.parameters()}


def _head_gradients(model: nn.Module, criterion: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-sample gradients of a model whose only trainable layer is its output `nn.Linear`."""
    head, features = model.head, model.features
    assert isinstance(head, nn.Linear) and callable(features)  # checked by _trains_only_its_head

    def gradients(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            activations = features(inputs)  # no weights before the head: nothing to differentiate
        bias = None if head.bias is None else head.bias.detach()
        logits = nn.functional.linear(activations, head.weight.detach(), bias)
        if head.out_features == 1:  # one logit or value per row, as the model's forward gives it
            logits = logits.squeeze(-1)
        logits.requires_grad_()
        loss = criterion(logits, targets)
        (dlogits,) = torch.autograd.grad(loss, logits)
        # Opacus' hooks scale the backprops of a mean-reduced loss by the batch size, so that
        # each row is one sample's own gradient; the optimiser divides by the expected batch size.
        # Backprops are (rows, outputs): one column for a single output, one per class otherwise.
        backprops = (dlogits * len(inputs)).reshape(len(inputs), head.out_features)
        for param, grad_sample in compute_linear_grad_sample(head, [activations], backprops).items():
            param.grad_sample = grad_sample
        return loss.detach()

    return gradients


def _backward_gradients(module: nn.Module, criterion: Callable) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Gradients from Opacus' wrapped module and loss: a plain backward pass does the work."""

    def gradients(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = criterion(module(inputs), targets)
        loss.backward()
        return loss.detach()

    return gradients


def secret_seed() -> int:
    """A 63-bit seed from the operating system's entropy (`secrets`), for DP-SGD's noise and sampling."""
    return secrets.randbits(63)


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
    noise_seed: int | None = None,
) -> PrivateTraining:
    """Opacus' DP optimiser and Poisson sampling for one round, and how per-sample gradients are bounded.

    ``per_sample="auto"`` takes "head" where the model allows it, else "ghost". The noise comes
    from a generator seeded from the operating system's entropy (`secret_seed`), never from the
    run's seed, which the coordinator knows: noise it could regenerate it could subtract.
    ``noise_seed`` fixes it instead, for tests that compare two trainings draw for draw.
    """
    if per_sample not in PER_SAMPLE:
        raise ValueError(f"unknown per-sample gradient method '{per_sample}' (choose from {', '.join(PER_SAMPLE)})")
    fits_head = _trains_only_its_head(model)
    if per_sample == "head" and not fits_head:
        raise ValueError("per-sample gradients from the output layer need a model whose only trainable layer it is")
    chosen = ("head" if fits_head else "ghost") if per_sample == "auto" else per_sample
    criterion = loss_fn(spec, scaler, config.class_weight)
    dataset = TensorDataset(torch.as_tensor(x, dtype=torch.float32), targets_of(y, spec, scaler))
    generator = torch.Generator().manual_seed(secret_seed() if noise_seed is None else noise_seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    with warnings.catch_warnings():
        # Opacus warns at every wrap that secure_mode (a CSPRNG for the noise) is off; the privacy
        # report states it once instead (privacy.report.MECHANISM).
        warnings.filterwarnings("ignore", message=".*Secure RNG turned off.*")
        engine = PrivacyEngine(accountant="rdp")  # the site's ledger does the accounting across rounds
        # Whichever method, the wrap checks the model is fit for DP-SGD (no BatchNorm). Under
        # "head" it is an ExpandedWeights wrap, which adds no hooks: the model runs unwrapped.
        wrapped = engine.make_private(
            module=model,
            optimizer=optimiser,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            noise_generator=generator,
            grad_sample_mode="ghost" if chosen == "ghost" else "ew",
            **({"criterion": criterion} if chosen == "ghost" else {}),
        )
    if chosen == "ghost":  # the engine also wraps the loss, whose backward does both passes
        module, dp_optimiser, dp_criterion, dp_loader = wrapped
    else:
        (module, dp_optimiser, dp_loader), dp_criterion = wrapped, criterion
    # The engine's own accountant would count this round alone; the site's ledger accounts the
    # whole run (privacy.ledger), so the per-step hook that feeds the engine's is dropped.
    dp_optimiser.attach_step_hook(None)
    if chosen == "head":
        gradients, module = _head_gradients(model, criterion), model
    else:
        gradients = _backward_gradients(module, dp_criterion)
    return PrivateTraining(
        optimiser=dp_optimiser,
        sample_rate=dp_loader.sample_rate,
        batches=len(dp_loader),
        per_sample=chosen,
        module=module,
        gradients=gradients,
    )


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
    noise_seed: int | None = None,
) -> tuple[float, int]:
    """Train in place with DP-SGD; return (mean loss of the last epoch, optimiser steps taken).

    The noise and the Poisson sampling are drawn from the operating system's entropy unless
    ``noise_seed`` fixes them (tests): which records joined a batch is as secret as the noise,
    since subsampling's amplification assumes nobody knows it.
    """
    torch.manual_seed(config.seed)
    private = make_private(
        model, x, y, spec=spec, scaler=scaler, config=config,
        noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm, per_sample=per_sample,
        noise_seed=noise_seed,
    )  # fmt: skip
    inputs = torch.as_tensor(x, dtype=torch.float32)
    targets = targets_of(y, spec, scaler)
    # Poisson sampling exactly as Opacus' DPDataLoader draws it (each record joins a batch
    # independently with probability `sample_rate`, `batches` batches per epoch), but on the
    # tensors directly: the per-record DataLoader fetch cost more than the clipping.
    generator = torch.Generator().manual_seed(secret_seed() if noise_seed is None else noise_seed + 1)
    private.module.train()
    steps, last = 0, 0.0
    with warnings.catch_warnings():
        # Ghost clipping's second backward pass fires the module's full backward hooks with no
        # input gradient (the inputs are data); PyTorch warns, Opacus expects it.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        for _ in range(config.epochs):
            last = _epoch(private, inputs, targets, generator, augmentation_of(spec))
            steps += private.batches
    return last, steps


def _epoch(
    private: PrivateTraining,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    augment: ImageAugment | None = None,
) -> float:
    """One epoch of Poisson batches; the mean loss over the rows it saw.

    Augmentation (image tasks) transforms each sampled image on its own, before its gradient is
    clipped: a sample is still one record, so the accounting is unchanged.
    """
    optimiser = private.optimiser
    # The loss is summed as a tensor and read once per epoch: a float() per step is a sync and a
    # Python round trip that the tiny models notice.
    total, seen = torch.zeros(()), 0
    for _ in range(private.batches):  # an empty batch is a step too
        idx = (torch.rand(len(inputs), generator=generator) < private.sample_rate).nonzero().squeeze(1)
        optimiser.zero_grad(set_to_none=True)  # the optimiser sets each .grad from the clipped sum and noise
        if len(idx) == 0:
            private.empty_batch()
        else:
            batch = inputs[idx] if augment is None else augment_images(inputs[idx], augment, generator)
            total += private.gradients(batch, targets[idx]) * len(idx)
            seen += len(idx)
        optimiser.step()
    return float(total) / max(seen, 1)

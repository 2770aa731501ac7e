"""Network architectures for tabular value-chain tasks, by name.

No BatchNorm anywhere: per-sample gradient clipping (DP-SGD) needs layers whose gradients
separate by sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["TabularMLP", "build_model", "get_weights", "set_weights", "MODEL_REGISTRY"]


class TabularMLP(nn.Module):
    """A small multilayer perceptron with one output (a logit or a scaled regression value)."""

    def __init__(self, n_inputs: int, hidden: Sequence[int] = (64, 32)):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {"mlp": TabularMLP}


def build_model(n_inputs: int, *, name: str = "mlp", hidden: Sequence[int] = (64, 32), seed: int = 0) -> nn.Module:
    """A freshly initialised model; the same seed gives the same initial weights everywhere."""
    if name not in MODEL_REGISTRY:
        raise KeyError(f"unknown model '{name}' (known: {sorted(MODEL_REGISTRY)})")
    torch.manual_seed(seed)
    return MODEL_REGISTRY[name](n_inputs, hidden=tuple(hidden))


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} weight arrays, got {len(weights)}")
    new_state = {}
    for (key, current), array in zip(state.items(), weights, strict=True):
        if tuple(current.shape) != tuple(np.shape(array)):
            raise ValueError(f"weight '{key}' has shape {np.shape(array)}, expected {tuple(current.shape)}")
        new_state[key] = torch.as_tensor(np.asarray(array), dtype=current.dtype)
    model.load_state_dict(new_state, strict=True)

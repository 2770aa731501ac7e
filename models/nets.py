"""Network architectures for tabular value-chain tasks, by name (see `models.architectures`).

No BatchNorm anywhere: per-sample gradient clipping (DP-SGD) needs layers whose gradients
separate by sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from models.architectures import ARCHITECTURES, PLE_KNOTS, check_architecture, input_width
from models.defaults import TRAINING_DEFAULTS

__all__ = [
    "TabularMLP",
    "PiecewiseLinearEncoding",
    "EncodedMLP",
    "TemporalConvNet",
    "build_model",
    "get_weights",
    "set_weights",
    "MODEL_REGISTRY",
    "implements",
]


MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
"""The network of each architecture in `models.architectures.ARCHITECTURES`, filled by `implements`."""


def implements(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register a network class as architecture ``name``, which `ARCHITECTURES` must already name."""

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        check_architecture(name)
        MODEL_REGISTRY[name] = cls
        return cls

    return register


@implements("mlp")
class TabularMLP(nn.Module):
    """A small multilayer perceptron: one output (a logit or a scaled regression value), or one logit per class."""

    def __init__(self, n_inputs: int, hidden: Sequence[int] = TRAINING_DEFAULTS.hidden, outputs: int = 1):
        super().__init__()
        self.outputs = outputs
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, outputs))
        self.net = nn.Sequential(*layers)

    @property
    def head(self) -> nn.Linear:
        """The output layer."""
        head = self.net[-1]
        assert isinstance(head, nn.Linear)  # built as one in __init__; Sequential indexing is typed Module
        return head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the output layer sees: the input through every layer before it."""
        *body, _ = self.net  # (slicing the Sequential would build a new module per call)
        for layer in body:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per row a logit (binary tasks), a standardised value (regression) or a (classes,) row of logits."""
        out = self.head(self.features(x))
        return out.squeeze(-1) if self.outputs == 1 else out


class PiecewiseLinearEncoding(nn.Module):
    """Each input x, followed by its piecewise-linear encoding over fixed bins.

    For bins [k0, k1), [k1, k2), ... the encoding of x is ``clamp((x - k_j) / (k_{j+1} - k_j), 0, 1)``
    per bin: 1 for bins wholly below x, the fraction of its own bin, 0 above (Gorishniy et al.,
    2022). Keeping x itself lets the model extrapolate linearly beyond the outer edges.

    The bins are fixed and nothing here is learned, so the encoding adds no weights to share,
    clip or noise. (The ``rtdl_num_embeddings`` implementation stores its bins as persistent
    buffers, which would travel with every model update; these are not persistent.)
    """

    scale: torch.Tensor  # buffers, registered in __init__
    offset: torch.Tensor

    def __init__(self, knots: Sequence[float] = PLE_KNOTS):
        super().__init__()
        edges = torch.tensor(knots, dtype=torch.float32)
        if edges.ndim != 1 or len(edges) < 2 or not bool((edges.diff() > 0).all()):
            raise ValueError(f"bin edges must increase strictly, got {list(knots)}")
        scale = 1.0 / edges.diff()
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("offset", -edges[:-1] * scale, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each input followed by its bin encoding (clamped to [0, 1])."""
        bins = torch.addcmul(self.offset, x.unsqueeze(-1), self.scale).clamp_(0.0, 1.0)
        return torch.cat([x, bins.flatten(1)], dim=1)


@implements("ple")
class EncodedMLP(TabularMLP):
    """`PiecewiseLinearEncoding` then `TabularMLP`; with ``hidden=()`` an additive model."""

    def __init__(self, n_inputs: int, hidden: Sequence[int] = (), outputs: int = 1):
        super().__init__(input_width("ple", n_inputs), hidden, outputs)
        self.encoding = PiecewiseLinearEncoding(PLE_KNOTS)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden features of the encoded inputs."""
        return super().features(self.encoding(x))


@implements("tcn")
class TemporalConvNet(nn.Module):
    """A temporal 1-D convolutional network over windows of rows, shape (batch, window, inputs).

    Each hidden width is one block: a dilated Conv1d (kernel 3, dilation 1, 2, 4, ..., the
    window length kept), GroupNorm and ReLU. No BatchNorm: Opacus computes per-sample gradients
    of Conv1d, GroupNorm and Linear, so it trains under DP-SGD (by ghost clipping). The output
    layer reads the last row's features and the window's mean features. With ``hidden=()`` only
    the output layer is trained, on the raw last row and window mean: a linear model.
    """

    def __init__(self, n_inputs: int, hidden: Sequence[int] = (32, 32), outputs: int = 1):
        super().__init__()
        self.outputs = outputs
        blocks: list[nn.Module] = []
        width = n_inputs
        for i, h in enumerate(hidden):
            dilation = 2**i
            blocks += [
                nn.Conv1d(width, h, kernel_size=3, dilation=dilation, padding=dilation),
                nn.GroupNorm(_groups_of(h), h),
                nn.ReLU(),
            ]
            width = h
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(2 * width, outputs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the output layer sees: the last row's and the window's mean features."""
        if x.ndim != 3:
            raise ValueError(f"the tcn model reads windows (batch, window, inputs), got shape {tuple(x.shape)}")
        h = self.body(x.transpose(1, 2))  # Conv1d wants (batch, channels, time)
        return torch.cat([h[:, :, -1], h.mean(dim=2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per window: a logit (binary), a standardised value (regression) or one logit per class (multiclass)."""
        out = self.head(self.features(x))
        return out.squeeze(-1) if self.outputs == 1 else out


def _groups_of(width: int) -> int:
    # GroupNorm needs groups that divide the channels; 8 channels a group where it can.
    for groups in (width // 8, 4, 2):
        if groups >= 1 and width % groups == 0:
            return groups
    return 1


# The torch-free list of names (checked in artifacts without torch) and the networks cannot drift apart.
_unimplemented = sorted(set(ARCHITECTURES) - set(MODEL_REGISTRY))
if _unimplemented:
    raise ImportError(f"models.architectures names {_unimplemented} but models.nets implements no network for them")


def build_model(
    n_inputs: int,
    *,
    name: str = TRAINING_DEFAULTS.model,
    hidden: Sequence[int] = TRAINING_DEFAULTS.hidden,
    outputs: int = 1,
    seed: int = 0,
) -> nn.Module:
    """A freshly initialised model (`outputs`: one per class of a multiclass task).

    The same seed gives the same initial weights everywhere.
    """
    check_architecture(name)
    torch.manual_seed(seed)
    if outputs == 1:  # as before multiclass tasks, so every registered network keeps working
        return MODEL_REGISTRY[name](n_inputs, hidden=tuple(hidden))
    return MODEL_REGISTRY[name](n_inputs, hidden=tuple(hidden), outputs=outputs)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's state as numpy arrays, in `state_dict` order (what travels to the coordinator)."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays from `get_weights` order into `model`; refuses a wrong count or shape."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} weight arrays, got {len(weights)}")
    new_state = {}
    for (key, current), array in zip(state.items(), weights, strict=True):
        if tuple(current.shape) != tuple(np.shape(array)):
            raise ValueError(f"weight '{key}' has shape {np.shape(array)}, expected {tuple(current.shape)}")
        new_state[key] = torch.as_tensor(np.asarray(array), dtype=current.dtype)
    model.load_state_dict(new_state, strict=True)

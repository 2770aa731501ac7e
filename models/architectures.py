"""The model architectures by name, in plain Python (no torch): enough to check an artifact.

- ``mlp``: the standardised inputs straight into a multilayer perceptron.
- ``ple``: each standardised input also passes through a fixed piecewise-linear encoding
  (Gorishniy et al., "On Embeddings for Numerical Features in Tabular Deep Learning",
  NeurIPS 2022) before the perceptron. With no hidden layer the model is a generalised
  additive model: one learned piecewise-linear curve per input, summed. It is the default
  under DP-SGD: a convex model on good features loses far less to the noise than a deep net
  (Tramèr & Boneh, "Differentially Private Learning Needs Better Features", ICLR 2021).
- ``tcn``: for sequence tasks (`models.sequence`), a temporal 1-D convolutional network over
  each window of rows (dilated convolutions, GroupNorm, no BatchNorm), read out from the last
  row's features and the window's mean. With no hidden layer: a linear model of the last row
  and the window mean.
"""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "PLE_KNOTS", "SEQUENCE_ARCHITECTURES", "check_architecture", "input_width", "weight_shapes"]

# Bin edges in standard deviations from the federation's mean (the inputs are standardised by
# the federated scaler, so every site encodes alike). Every half deviation from -3 to 3:
# finer bins measured worse under DP (more weights share the noise), coarser ones worse too.
PLE_KNOTS: tuple[float, ...] = tuple(k / 2 for k in range(-6, 7))

ARCHITECTURES: dict[str, str] = {
    "mlp": "multilayer perceptron on the standardised inputs",
    "ple": "piecewise-linear encoding of each input, then a perceptron (none: an additive model)",
    "tcn": "temporal convolutional network over a window of rows (sequence tasks only)",
}
# The architectures that read windows (batch, window, inputs) rather than rows.
SEQUENCE_ARCHITECTURES: tuple[str, ...] = ("tcn",)


def check_architecture(name: str) -> str:
    """`name` if it is a known architecture; else ValueError naming the known ones."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model '{name}' (known: {sorted(ARCHITECTURES)})")
    return name


def input_width(name: str, n_inputs: int) -> int:
    """Width of the first linear layer: the inputs, plus one value per bin under ``ple``."""
    if check_architecture(name) == "ple":
        return n_inputs * len(PLE_KNOTS)  # the input itself and len(PLE_KNOTS) - 1 bins
    return n_inputs


def weight_shapes(
    name: str, n_inputs: int, hidden: list[int] | tuple[int, ...], outputs: int = 1
) -> list[tuple[int, ...]]:
    """The shape of each weight array of architecture `name`, in `models.nets.get_weights` order.

    ``mlp``/``ple``: a (width, inputs) matrix and a bias per linear layer. ``tcn``: per hidden
    block a (width, inputs, 3) Conv1d kernel, its bias, and GroupNorm's scale and shift; then the
    output layer on the last row's and the window mean's features, (outputs, 2 * width).
    """
    width = input_width(name, n_inputs)
    shapes: list[tuple[int, ...]] = []
    if name in SEQUENCE_ARCHITECTURES:
        for h in hidden:
            shapes += [(h, width, 3), (h,), (h,), (h,)]
            width = h
        return [*shapes, (outputs, 2 * width), (outputs,)]
    for h in hidden:
        shapes += [(h, width), (h,)]
        width = h
    return [*shapes, (outputs, width), (outputs,)]

"""Plain numpy float64 forward pass: the readable reference the fast kernel is tested against.

Used by ``estimate(..., precision="float64")`` (and so by ``leaf sl2p-table``) and as the benchmark baseline.
"""

from __future__ import annotations

import numpy as np

from .networks import Network


def forward(net: Network, x: np.ndarray) -> np.ndarray:
    """Network output for ``x`` of shape (n_inputs, n_pixels), float64; NaN inputs give NaN."""
    xn = x * net.input_slope[:, None] + net.input_offset[:, None]
    h = np.tanh(net.layer1_weights @ xn + net.layer1_bias[:, None])
    yn = net.layer2_weights @ h + net.layer2_bias
    return (yn - net.output_offset) / net.output_slope


def forward_partitioned(nets: tuple[Network, ...], x: np.ndarray, network_index: np.ndarray | None) -> np.ndarray:
    """Per-pixel network choice: pixel p uses ``nets[network_index[p]]`` (all use ``nets[0]`` when None)."""
    if network_index is None or len(nets) == 1:
        return forward(nets[0], x)
    out = np.empty(x.shape[1], dtype=np.float64)
    for k in np.unique(network_index):
        sel = network_index == k
        out[sel] = forward(nets[int(k)], x[:, sel])
    return out

"""SL2P: network sets (schema ``sl2p-nets/1``), forward pass, input-domain and output-range tests (SPEC §5).

``load_network_set`` reads a set by shipped id or path; ``estimate`` runs it on named input arrays. The float32
fast path is the numba kernel in :mod:`.kernel`; the float64 path is the plain numpy reference in
:mod:`.reference`; the input-domain rule is documented in :mod:`.domain`.
"""

from .estimate import DEFAULT_VARIABLES, Estimates, estimate, network_index_of, valid_range
from .networks import (
    CANONICAL_VARIABLES,
    Domain,
    Network,
    NetworkFileWarning,
    NetworkSet,
    VariableNets,
    canonical_variable,
    load_network_set,
    shipped_sets,
)

__all__ = [
    "CANONICAL_VARIABLES",
    "DEFAULT_VARIABLES",
    "Domain",
    "Estimates",
    "Network",
    "NetworkFileWarning",
    "NetworkSet",
    "VariableNets",
    "canonical_variable",
    "estimate",
    "load_network_set",
    "network_index_of",
    "shipped_sets",
    "valid_range",
]

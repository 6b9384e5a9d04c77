"""Connected components over duplicate edges: a vectorised union-find.

Runs in one place (the driver) over the *edges only*: nodes are the documents that
appear in at least one edge, so memory grows with the number of duplicate candidates,
not with the corpus. Each round hooks every edge's larger root under its smaller root
(``np.minimum.at``), then compresses paths by pointer jumping until every node points
at its root; it stops when no edge joins two different roots. The root of a component
is its smallest node, so labels do not depend on edge order.
"""

from __future__ import annotations

import numpy as np


def connected_components(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(nodes, root)``: the sorted distinct node ids of the edges (u[i], v[i])
    and, for each, the smallest node id of its component."""
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    nodes = np.unique(np.concatenate([u, v]))
    if len(nodes) == 0:
        return nodes, nodes.copy()
    cu = np.searchsorted(nodes, u)
    cv = np.searchsorted(nodes, v)
    parent = np.arange(len(nodes), dtype=np.int64)
    while True:
        ru, rv = parent[cu], parent[cv]
        differ = ru != rv
        if not differ.any():
            break
        ru, rv = ru[differ], rv[differ]
        lo, hi = np.minimum(ru, rv), np.maximum(ru, rv)
        np.minimum.at(parent, hi, lo)          # hook: larger root under smaller
        while True:                            # compress: pointer jumping
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return nodes, nodes[parent]

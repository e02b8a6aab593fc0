"""Weighted set packing, the form of both EMD and H-EMD matchings (the only module that imports PuLP/HiGHS).

Maximise ``w . x`` over binary ``x`` subject to ``sum(x[j] for j in group) <= 1`` for every constraint group.
The problem is split into the connected blocks of its variable/constraint graph; each block is solved on its
own: one variable directly, up to ``ENUMERATE_MAX`` variables by exhaustive enumeration (exact, no solver
start-up cost), larger blocks by an ILP solver from ``SOLVERS``.

Time limit: every solver call gets ``time_limit`` seconds. If it stops without a proven optimum, the block is
solved greedily instead (``on_timeout="greedy"``: take variables in decreasing weight, skipping any that would
break a constraint; ties by index) — a feasible 1/k-approximation, where k is the most constraints one variable
sits in — or :class:`segflow.errors.SolverTimeout` is raised (``on_timeout="raise"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.sparse.csgraph import connected_components

from segflow.errors import SolverTimeout

ENUMERATE_MAX = 10


@dataclass(frozen=True)
class Packing:
    """Result of :func:`solve_packing`: chosen variables, objective, block count and fallbacks used."""

    x: NDArray[np.bool_]
    objective: float
    n_blocks: int
    n_solver_calls: int
    n_fallbacks: int


def _incidence(n_vars: int, rows: NDArray, cols: NDArray) -> sparse.csr_matrix:
    n_rows = int(rows.max()) + 1 if rows.size else 0
    a = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n_rows, n_vars))
    a.sum_duplicates()
    a.data[:] = 1.0  # a variable listed twice in one constraint still counts once
    return a


_QUIET = False


def _new_highs():
    """A ``highspy.Highs`` instance; the first one is built with stdout muted (HiGHS prints a banner once)."""
    global _QUIET
    import highspy

    if _QUIET:
        return highspy.Highs()
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        h = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
    _QUIET = True
    return h


def solve_highs(w: NDArray, a: sparse.csr_matrix, time_limit: float | None) -> NDArray | None:
    """Solve one block with highspy directly; None if no proven optimum within the time limit."""
    import highspy

    h = _new_highs()
    h.setOptionValue("output_flag", False)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    lp = highspy.HighsLp()
    n = w.size
    lp.num_col_, lp.num_row_ = n, a.shape[0]
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = np.asarray(w, np.float64)
    lp.col_lower_, lp.col_upper_ = np.zeros(n), np.ones(n)
    lp.row_lower_, lp.row_upper_ = np.full(a.shape[0], -highspy.kHighsInf), np.ones(a.shape[0])
    csc = a.tocsc()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_ = csc.indptr, csc.indices
    lp.a_matrix_.value_ = csc.data.astype(np.float64)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n
    h.passModel(lp)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    return np.asarray(h.getSolution().col_value) > 0.5


def _solve_pulp(w: NDArray, a: sparse.csr_matrix, time_limit: float | None, backend: str) -> NDArray | None:
    import pulp

    if backend == "highs":
        _new_highs()  # mute the one-time banner
    prob = pulp.LpProblem("packing", pulp.LpMaximize)
    x = [pulp.LpVariable(f"x{j}", cat="Binary") for j in range(w.size)]
    prob += pulp.lpSum(float(w[j]) * x[j] for j in range(w.size))
    for r in range(a.shape[0]):
        idx = a.indices[a.indptr[r]:a.indptr[r + 1]]
        if idx.size > 1:
            prob += pulp.lpSum(x[j] for j in idx) <= 1
    solver = (pulp.HiGHS(msg=False, timeLimit=time_limit) if backend == "highs"
              else pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit))
    status = prob.solve(solver)
    if pulp.LpStatus[status] != "Optimal" or (backend == "highs" and not _pulp_highs_optimal(solver)):
        return None
    return np.array([(v.value() or 0.0) > 0.5 for v in x])


def _pulp_highs_optimal(solver) -> bool:
    model = getattr(solver, "solverModel", None)
    if model is None:  # pragma: no cover - older PuLP
        return True
    import highspy

    return model.getModelStatus() == highspy.HighsModelStatus.kOptimal


def solve_pulp_highs(w, a, time_limit):
    """Solve one block through PuLP's HiGHS interface; None without a proven optimum."""
    return _solve_pulp(w, a, time_limit, "highs")


def solve_pulp_cbc(w, a, time_limit):
    """Solve one block through PuLP's CBC (optional: PuLP 3 may ship without it); None without an optimum."""
    return _solve_pulp(w, a, time_limit, "cbc")


SOLVERS: dict[str, Callable[[NDArray, sparse.csr_matrix, float | None], NDArray | None]] = {
    "highs": solve_highs,
    "pulp": solve_pulp_highs,
    "cbc": solve_pulp_cbc,
}


def available_solvers() -> list[str]:
    """Names in :data:`SOLVERS` whose library is importable (CBC only when PuLP finds its binary)."""
    out = []
    for name in SOLVERS:
        try:
            if name == "highs":
                import highspy  # noqa: F401
            else:
                import pulp

                if name == "cbc" and not pulp.PULP_CBC_CMD(msg=False).available():
                    continue
            out.append(name)
        except ImportError:
            continue
    return out


def greedy(w: NDArray, a: sparse.csr_matrix) -> NDArray[np.bool_]:
    """Greedy packing: decreasing weight (ties by index), skipping variables that break a constraint."""
    x = np.zeros(w.size, bool)
    used = np.zeros(a.shape[0], bool)
    csc = a.tocsc()
    for j in np.argsort(-w, kind="stable"):
        if w[j] <= 0:
            break
        rows = csc.indices[csc.indptr[j]:csc.indptr[j + 1]]
        if not used[rows].any():
            used[rows] = True
            x[j] = True
    return x


def enumerate_block(w: NDArray, a: sparse.csr_matrix) -> NDArray[np.bool_]:
    """Exact solution of a small block by trying all 2**n subsets (first best subset in binary order)."""
    n = w.size
    subsets = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(np.float64)
    feasible = ((subsets @ a.T.toarray()) <= 1).all(axis=1) if a.shape[0] else np.ones(2**n, bool)
    value = np.where(feasible, subsets @ w, -np.inf)
    return subsets[int(np.argmax(value))] > 0


def solve_packing(weights: NDArray, rows: NDArray, cols: NDArray, *, solver: str = "highs",
                  time_limit: float | None = 10.0, on_timeout: str = "greedy",
                  enumerate_max: int = ENUMERATE_MAX) -> Packing:
    """Maximise ``weights . x`` for binary ``x`` with at most one chosen variable per constraint row.

    Parameters
    ----------
    weights : ndarray of float, shape (n,)
        Weight of each variable; variables with weight <= 0 are never chosen.
    rows, cols : ndarray of int
        Sparse incidence: variable ``cols[k]`` belongs to constraint ``rows[k]``.
    solver : str
        Key of :data:`SOLVERS` for blocks larger than ``enumerate_max`` variables.
    time_limit : float or None
        Seconds per solver call.
    on_timeout : {"greedy", "raise"}
        What to do when a solver call ends without a proven optimum.
    enumerate_max : int
        Largest block solved by enumeration (0 sends every block of two or more variables to the solver).

    Returns
    -------
    Packing

    Examples
    --------
    >>> w = np.array([0.9, 0.8, 0.85, 0.1])          # 2 x 2 assignment where greedy is not optimal
    >>> rows = np.array([0, 2, 0, 3, 1, 2, 1, 3]); cols = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    >>> solve_packing(w, rows, cols).x.tolist()
    [False, True, True, False]
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: choose one of {sorted(SOLVERS)}")
    if on_timeout not in ("greedy", "raise"):
        raise ValueError(f"on_timeout must be 'greedy' or 'raise', got {on_timeout!r}")
    w = np.asarray(weights, np.float64)
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    x = np.zeros(w.size, bool)
    live = np.flatnonzero(w > 0)
    if live.size == 0:
        return Packing(x, 0.0, 0, 0, 0)
    a = _incidence(w.size, rows, cols)[:, live].tocsr()
    a = a[np.diff(a.indptr) > 0]
    n_blocks, block = _blocks(a)
    order = np.argsort(block, kind="stable")
    starts = np.searchsorted(block[order], np.arange(n_blocks + 1))
    a_csc = a.tocsc()
    calls = fallbacks = 0
    for b in range(n_blocks):
        idx = order[starts[b]:starts[b + 1]]
        if idx.size == 1:
            x[live[idx[0]]] = True
            continue
        sub = a_csc[:, idx].tocsr()
        sub = sub[np.diff(sub.indptr) > 0]
        wb = w[live[idx]]
        if idx.size <= enumerate_max:
            xb = enumerate_block(wb, sub)
        else:
            calls += 1
            xb = SOLVERS[solver](wb, sub, time_limit)
            if xb is None:
                if on_timeout == "raise":
                    raise SolverTimeout(f"the {solver} solver found no proven optimum for a block of {idx.size} "
                                        f"matches within {time_limit} s: raise time_limit or allow the greedy "
                                        "fallback.")
                fallbacks += 1
                xb = greedy(wb, sub)
        x[live[idx]] = xb
    return Packing(x, float(w[x].sum()), n_blocks, calls, fallbacks)


def _blocks(a: sparse.csr_matrix) -> tuple[int, NDArray[np.int64]]:
    """Connected blocks of the variables (two variables connect when they share a constraint)."""
    n_rows, n_vars = a.shape
    if n_rows == 0:
        return n_vars, np.arange(n_vars, dtype=np.int64)
    bip = sparse.bmat([[None, a], [a.T, None]], format="csr")
    _, comp = connected_components(bip, directed=False)
    var_comp = comp[n_rows:]
    uniq, block = np.unique(var_comp, return_inverse=True)
    return uniq.size, block.astype(np.int64)

"""Set-packing ILPs (EMD and H-EMD matchings) on small cases with known optima."""

from __future__ import annotations

import numpy as np
import pytest
from segflow.solvers import _ilp
from segflow.solvers._ilp import available_solvers, greedy, solve_packing

from segflow.errors import SolverTimeout

SOLVER_NAMES = available_solvers()


def assignment_2x2():
    """EMD: selections a0, a1 vs b0, b1; weights where greedy (0.9 then 0.1) loses to 0.8 + 0.85."""
    w = np.array([0.9, 0.8, 0.85, 0.1])                       # pairs a0b0, a0b1, a1b0, a1b1
    a, b = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    j = np.arange(4)
    return w, np.concatenate([a, 2 + b]), np.concatenate([j, j])


def hemd_tree():
    """H-EMD: tree root r with children c1, c2; references A, B; path constraints {r, c1}, {r, c2}.

    Pairs: (r, A) 0.7, (c1, A) 0.5, (c2, B) 0.45, (c2, A) 0.3. Optimum: c1-A + c2-B = 0.95 > 0.7.
    """
    w = np.array([0.7, 0.5, 0.45, 0.3])
    ref = np.array([0, 0, 1, 0])
    rows = [*ref.tolist(), 2, 3, 2, 3, 3]                     # ref rows 0-1, path rows 2 (r..c1), 3 (r..c2)
    cols = [0, 1, 2, 3, 0, 0, 1, 2, 3]
    return w, np.array(rows), np.array(cols)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
@pytest.mark.parametrize("enumerate_max", [0, 10])
def test_known_optima(solver, enumerate_max):
    w, r, c = assignment_2x2()
    res = solve_packing(w, r, c, solver=solver, enumerate_max=enumerate_max)
    assert res.x.tolist() == [False, True, True, False]
    assert res.objective == pytest.approx(1.65)
    assert res.n_solver_calls == (1 if enumerate_max == 0 else 0)
    w, r, c = hemd_tree()
    res = solve_packing(w, r, c, solver=solver, enumerate_max=enumerate_max)
    assert res.x.tolist() == [False, True, True, False]
    assert res.objective == pytest.approx(0.95)


def test_greedy_is_feasible_but_not_optimal_here():
    w, r, c = assignment_2x2()
    x = greedy(w, _ilp._incidence(4, r, c))
    assert x.tolist() == [True, False, False, True]


def test_blocks_are_solved_separately():
    w, r, c = assignment_2x2()
    w2 = np.concatenate([w, w])
    res = solve_packing(w2, np.concatenate([r, r + 4]), np.concatenate([c, c + 4]))
    assert res.n_blocks == 2 and res.objective == pytest.approx(3.3)


def test_nonpositive_weights_never_chosen():
    res = solve_packing(np.array([0.0, -1.0, 0.2]), np.array([0, 1, 2]), np.array([0, 1, 2]))
    assert res.x.tolist() == [False, False, True]


@pytest.mark.parametrize("seed", range(6))
def test_enumeration_matches_highs_on_random_blocks(seed):
    rng = np.random.default_rng(seed)
    w = rng.random(9)
    r, c = rng.integers(0, 6, 20), rng.integers(0, 9, 20)
    exact = solve_packing(w, r, c, enumerate_max=20).objective
    assert solve_packing(w, r, c, enumerate_max=0).objective == pytest.approx(exact)
    assert greedy(w, _ilp._incidence(9, r, c)) @ w <= exact + 1e-12


def test_timeout_falls_back_to_greedy_or_raises(monkeypatch):
    monkeypatch.setitem(_ilp.SOLVERS, "stuck", lambda w, a, t: None)   # a solver that never proves optimality
    w, r, c = assignment_2x2()
    res = solve_packing(w, r, c, solver="stuck", enumerate_max=0)
    assert res.n_fallbacks == 1 and res.x.tolist() == [True, False, False, True]
    with pytest.raises(SolverTimeout, match="time_limit"):
        solve_packing(w, r, c, solver="stuck", enumerate_max=0, on_timeout="raise")


def test_unknown_solver():
    with pytest.raises(ValueError, match="unknown solver"):
        solve_packing(np.ones(1), np.zeros(1, int), np.zeros(1, int), solver="gurobi")

"""Fixed-step ODE integrators written once over an array namespace (numpy on the CPU, CuPy on the GPU).

One public function, :func:`integrate`, in the style of torchdiffeq's ``odeint(f, y0, t)``: the caller passes
the explicit time grid ``t`` (build it with :func:`uniform_grid`), so the number of network evaluations is
always ``nfe(method, len(t) - 1)`` — Euler with N steps costs N evaluations, Heun 2N, RK4 4N. The velocity
field follows the :class:`VectorField` protocol ``f(x, t) -> v``; conditioning (cached image features, labels,
guidance) is bound into ``f`` when it is built, so the integrators know nothing about images.

Examples
--------
>>> import numpy as np
>>> x1 = integrate(lambda x, t: -x, np.ones(2), uniform_grid(4), method="euler")
>>> x1.tolist()  # (1 - 1/4) ** 4
[0.31640625, 0.31640625]
>>> nfe("rk4", 4)
16
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

__all__ = ["VectorField", "STEPS", "STAGES", "integrate", "uniform_grid", "nfe", "array_namespace",
           "euler_step", "heun_step", "rk4_step"]


class VectorField(Protocol):
    """A velocity field ``f(x, t) -> v`` with ``x`` an array, ``t`` a Python float, ``v`` shaped like ``x``."""

    def __call__(self, x: Any, t: float) -> Any: ...


def array_namespace(x: Any) -> Any:
    """Return the array module of ``x``: ``cupy`` for CuPy arrays, else ``numpy``.

    CuPy is detected from the array's type, so this never imports CuPy on a CPU machine.
    """
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def euler_step(f: VectorField, x: Any, t0: float, dt: float) -> Any:
    """One explicit Euler step (1 evaluation)."""
    return x + dt * f(x, t0)


def heun_step(f: VectorField, x: Any, t0: float, dt: float) -> Any:
    """One Heun step, the explicit trapezoidal rule (2 evaluations, order 2)."""
    k1 = f(x, t0)
    k2 = f(x + dt * k1, t0 + dt)
    return x + (0.5 * dt) * (k1 + k2)


def rk4_step(f: VectorField, x: Any, t0: float, dt: float) -> Any:
    """One classical Runge–Kutta step (4 evaluations, order 4)."""
    half = 0.5 * dt
    k1 = f(x, t0)
    k2 = f(x + half * k1, t0 + half)
    k3 = f(x + half * k2, t0 + half)
    k4 = f(x + dt * k3, t0 + dt)
    return x + (dt / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)


STEPS: dict[str, Callable[[VectorField, Any, float, float], Any]] = {
    "euler": euler_step,
    "heun": heun_step,
    "rk4": rk4_step,
}
STAGES: dict[str, int] = {"euler": 1, "heun": 2, "rk4": 4}


def _check_method(method: str) -> None:
    if method not in STEPS:
        raise ValueError(f"unknown integration method {method!r}: choose one of {sorted(STEPS)}")


def nfe(method: str, n_steps: int) -> int:
    """Number of field evaluations of ``n_steps`` steps of ``method`` (``n_steps * STAGES[method]``)."""
    _check_method(method)
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    return int(n_steps) * STAGES[method]


def uniform_grid(n_steps: int, xp: Any = np, *, t0: float = 0.0, t1: float = 1.0) -> Any:
    """A grid of ``n_steps + 1`` equally spaced times from ``t0`` to ``t1`` (float64, both ends included).

    Examples
    --------
    >>> uniform_grid(4).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps}")
    return xp.linspace(t0, t1, int(n_steps) + 1, dtype=xp.float64)


def integrate(f: VectorField, x0: Any, t: Any, *, method: str = "euler",
              callback: Callable[[int, float, Any], None] | None = None) -> Any:
    """Integrate ``dx/dt = f(x, t)`` from ``x0`` at ``t[0]`` over the grid ``t``; return the state at ``t[-1]``.

    Parameters
    ----------
    f : VectorField
        ``f(x, t) -> v``; called exactly ``nfe(method, len(t) - 1)`` times.
    x0 : array
        Initial state (numpy or CuPy; it stays in its namespace and is not modified).
    t : sequence of float
        Strictly monotonic time grid with at least two points.
    method : {"euler", "heun", "rk4"}
        Step rule (see :data:`STEPS`).
    callback : callable, optional
        ``callback(i, t_i, x_i)`` after each step ``i`` (1-based), with the state at ``t_i``.

    Returns
    -------
    array
        The state at ``t[-1]``, same namespace as ``x0``.
    """
    _check_method(method)
    times = [float(v) for v in (t.tolist() if hasattr(t, "tolist") else t)]
    if len(times) < 2:
        raise ValueError(f"t must hold at least two times, got {len(times)}")
    dts = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
    if not (all(d > 0 for d in dts) or all(d < 0 for d in dts)):
        raise ValueError("t must be strictly monotonic")
    step = STEPS[method]
    x = x0
    for i, (t_i, dt) in enumerate(zip(times[:-1], dts, strict=True), start=1):
        x = step(f, x, t_i, dt)
        if callback is not None:
            callback(i, times[i], x)
    return x

"""Names the command line offers as choices, kept import-free so ``runtime --help`` stays fast.

The registries they name live in heavier modules (``blend.BLENDS``, ``integrators.STEPS``, the instance and
solver methods, which pull in scipy and PuLP); ``tests/runtime/test_cli_help.py`` checks that each tuple here
equals its registry, so a method added there and not here fails the suite instead of hiding from ``--help``.
"""

from __future__ import annotations

INTEGRATORS = ("euler", "heun", "rk4")
BLENDS = ("average", "gaussian", "linear", "pyramid")
INSTANCE_METHODS = ("hemd", "watershed", "threshold")  # runtime segment --instances (SDF input)
SOLVE_METHODS = ("hemd", "threshold", "otsu", "watershed", "maxvalue")  # runtime solve --method (prob input)
MAP_KINDS = ("prob", "sdf", "classes")  # runtime solve --kind
BACKENDS = ("auto", "cpu", "cuda", "tensorrt")

"""Hand-worked checks of the ambiguity metrics (GED, S_c, D_max, D_a, CI, JS, D_DDI)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from segflow.solvers.ambiguity import (
    ci_score,
    combined_sensitivity,
    d_ddi,
    d_max,
    diversity_agreement,
    ged,
    js_divergence,
    pairwise_dice,
    pairwise_iou,
    pairwise_variance,
)

# 1 x 4 strips (P = 4 pixels).
A = np.array([[1, 1, 0, 0]], bool)   # 2 px
B = np.array([[0, 1, 1, 0]], bool)   # 2 px, meets A in 1 px: IoU 1/3, Dice 1/2
E = np.zeros((1, 4), bool)           # empty
F = np.ones((1, 4), bool)            # full


def stack(*masks):
    return np.stack(masks)


def test_pairwise_iou_and_dice_with_empty_convention():
    iou = pairwise_iou(stack(A, B, E), stack(A, E))
    np.testing.assert_allclose(iou, [[1, 0], [1 / 3, 0], [0, 1]])
    dice = pairwise_dice(stack(A, B, E), stack(A, E))
    np.testing.assert_allclose(dice, [[1, 0], [0.5, 0], [0, 1]])


def test_ged_hand_worked():
    # d(S,Y) = [[0, 1], [2/3, 1]] -> mean 2/3; d(S,S) = [[0, 2/3], [2/3, 0]] -> 1/3; d(Y,Y) = [[0,1],[1,0]] -> 1/2
    assert ged(stack(A, B), stack(A, E)) == pytest.approx(2 * 2 / 3 - 1 / 3 - 1 / 2)


def test_ged_zero_for_identical_sets_and_two_empties():
    assert ged(stack(A, B), stack(B, A)) == pytest.approx(0.0, abs=1e-12)
    assert ged(stack(E), stack(E, E)) == 0.0


def test_ged_is_symmetric():
    s, y = stack(A, B, F), stack(E, A)
    assert ged(s, y) == pytest.approx(ged(y, s))


def test_combined_sensitivity():
    # union S = B = {1, 2}; union Y = A = {0, 1}; covered 1 of 2
    assert combined_sensitivity(stack(B, E), stack(A, E)) == 0.5
    assert combined_sensitivity(stack(B), stack(E, E)) == 1.0
    assert combined_sensitivity(stack(E), stack(A)) == 0.0


def test_d_max_hand_worked():
    # annotator A: best of Dice(A,B)=1/2, Dice(A,E)=0 -> 1/2; annotator E: Dice(E,E)=1 -> 1
    assert d_max(stack(B, E), stack(A, E)) == pytest.approx(0.75)


def test_pairwise_variance():
    # |A xor F| = 2, |A xor E| = 2, |F xor E| = 4; divided by 4 P = 16
    np.testing.assert_allclose(pairwise_variance(stack(A, F, E)), [2 / 16, 2 / 16, 4 / 16])
    assert pairwise_variance(stack(A)).size == 0


def test_diversity_agreement_hand_worked():
    # annotators: V in {1/8, 1/8, 1/4}; samples {A, A}: V = 0  ->  1 - (1/4 + 1/8) / 2
    assert diversity_agreement(stack(A, A), stack(A, F, E)) == pytest.approx(1 - (0.25 + 0.125) / 2)
    assert diversity_agreement(stack(A, F, E), stack(F, A, E)) == 1.0
    assert diversity_agreement(stack(A), stack(B)) == 1.0  # no pairs on either side


def test_ci_score_hand_worked():
    s, y = stack(A, A), stack(A, F, E)
    s_c, dm, da = Fraction(1, 2), (1 + Fraction(2, 3) + 0) / 3, 1 - (Fraction(1, 4) + Fraction(1, 8)) / 2
    want = 3 * s_c * dm * da / (s_c + dm + da)
    got = ci_score(s, y)
    assert (got.s_c, got.d_max, got.d_a) == pytest.approx((float(s_c), float(dm), float(da)))
    assert got.ci == pytest.approx(float(want))


def test_ci_score_perfect_and_zero():
    assert ci_score(stack(A, B), stack(A, B)).ci == pytest.approx(1.0)
    assert ci_score(stack(E), stack(A)).ci == 0.0


def test_js_divergence_hand_worked():
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert js_divergence([3, 1], [3, 1]) == 0.0
    # p = (1/2, 1/2), q = (1, 0), m = (3/4, 1/4)
    want = 0.5 * (0.5 * math.log2(2 / 3) + 0.5 * math.log2(2)) + 0.5 * math.log2(4 / 3)
    assert js_divergence([1, 1], [2, 0]) == pytest.approx(want)
    with pytest.raises(ValueError):
        js_divergence([0, 0], [1, 0])


def test_d_ddi_hand_worked():
    # N = 2 images, M = 2 annotators. Expert Dice per image: 1 (identical), 0 (disjoint).
    y = np.stack([stack(A, A), stack(A, ~A)])
    s = np.stack([stack(B, B), stack(F, F)])          # generated Dice: 1, 1
    want = js_divergence([1, 1], [0, 2])              # bins 0 and 9 of 10, same JS as two bins
    assert d_ddi(s, y) == pytest.approx(want)
    assert d_ddi(y, y) == 0.0


def test_d_ddi_averages_over_pairs():
    # M = 3: pairs (0,1), (0,2), (1,2). Only pair (0, 1) differs (expert 1 vs generated 0 on one image).
    y = np.stack([stack(A, A, A)])
    s = np.stack([stack(A, ~A, A)])   # Dice(0,1) = 0, Dice(0,2) = 1, Dice(1,2) = 0
    # pairs: (0,1) 1 vs 0 -> JS 1; (0,2) 1 vs 1 -> 0; (1,2) 1 vs 0 -> 1
    assert d_ddi(s, y) == pytest.approx(2 / 3)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="pixel counts"):
        ged(stack(A), np.zeros((1, 5), bool))
    with pytest.raises(ValueError, match="M >= 2"):
        d_ddi(np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 4, 4)))
    with pytest.raises(ValueError, match="stack of masks"):
        ged(np.zeros(4), stack(A))

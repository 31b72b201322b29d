"""DSP losses (Cheng et al. 2023; docs/methods/dsp.md) against values computed by hand on literal tensors.

Notation: L(x) = -log sigmoid(x) = log(1 + e^-x).
"""

from __future__ import annotations

import math

import pytest
import torch

from feedbackflow.losses.reward import (
    lm_loss,
    lm_loss_terms,
    lm_target_mask,
    ranking_loss,
    ranking_loss_terms,
    ranking_pair_mask,
)

# L(2) = log(1 + e^-2) = 0.126928
L2 = 0.1269280110
# L(1) = log(1 + e^-1) = 0.313262
L1 = 0.3132616875
# L(0) = log 2 = 0.693147
L0 = 0.6931471806


def t(values, dtype=torch.float32, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def b(values):
    return torch.tensor(values, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------------------------
# ranking loss


def test_pair_mask_excludes_ties_padding_and_diagonal():
    scores = t([[1.0, 1.0, 0.0, 5.0]])
    mask = b([[True, True, True, False]])
    expected = b(
        [
            [
                [False, False, True, False],
                [False, False, True, False],
                [True, True, False, False],
                [False, False, False, False],
            ]
        ]
    )
    assert torch.equal(ranking_pair_mask(scores, mask), expected)


def test_two_texts_known_value():
    # scores [1, 0], rewards [2, 0]: both ordered pairs give L(2 - 0) = 0.126928; sum 0.253856 over 2 pairs
    rewards, scores, mask = t([[2.0, 0.0]]), t([[1.0, 0.0]]), b([[True, True]])
    total, count = ranking_loss_terms(rewards, scores, mask)
    assert int(count) == 2
    assert total.item() == pytest.approx(2 * L2, abs=1e-6)
    assert ranking_loss(rewards, scores, mask).item() == pytest.approx(L2, abs=1e-6)


def test_two_texts_equal_rewards_is_log_two():
    # L(0) = log 2 = 0.693147
    loss = ranking_loss(t([[0.3, 0.3]]), t([[1.0, 0.0]]), b([[True, True]]))
    assert loss.item() == pytest.approx(L0, abs=1e-6)


def test_three_texts_with_tie():
    # scores [1, 1, 0]: the tied pair (0, 1) is excluded; ordered pairs (0,2), (2,0), (1,2), (2,1) -> count 4.
    # rewards [1, 2, 0]: pairs with text 0 give L(1) = 0.313262, pairs with text 1 give L(2) = 0.126928.
    # mean = (2 * 0.313262 + 2 * 0.126928) / 4 = 0.220095 (if the tie counted, 6 pairs with L(+-1) added).
    rewards, scores, mask = t([[1.0, 2.0, 0.0]]), t([[1.0, 1.0, 0.0]]), b([[True, True, True]])
    total, count = ranking_loss_terms(rewards, scores, mask)
    assert int(count) == 4
    assert total.item() == pytest.approx(2 * L1 + 2 * L2, abs=1e-6)
    assert ranking_loss(rewards, scores, mask).item() == pytest.approx(0.2200948493, abs=1e-6)


@pytest.mark.parametrize("garbage", [1e6, -1e6, 1e30])
def test_padding_is_ignored_with_garbage_rewards(garbage):
    # list [2, 0 | pad]: same as the two-text list: L(2) = 0.126928 over 2 pairs
    rewards = t([[2.0, 0.0, garbage]], grad=True)
    scores = t([[1.0, 0.0, 7.0]])
    mask = b([[True, True, False]])
    total, count = ranking_loss_terms(rewards, scores, mask)
    assert int(count) == 2
    loss = ranking_loss(rewards, scores, mask)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(L2, abs=1e-6)
    loss.backward()
    assert torch.isfinite(rewards.grad).all()
    assert rewards.grad[0, 2].item() == 0.0
    # d/dr0 of L(r0 - r1) = -sigmoid(r1 - r0) = -1 / (1 + e^2) = -0.119203 (mean of two equal terms)
    assert rewards.grad[0, 0].item() == pytest.approx(-0.1192029220, abs=1e-6)
    assert rewards.grad[0, 1].item() == pytest.approx(0.1192029220, abs=1e-6)


def test_scores_in_reverse_order():
    # scores [0, 1]: text 1 is preferred. rewards [0, 2] -> L(2) = 0.126928; rewards [2, 0] -> L(-2) = 2.126928
    scores, mask = t([[0.0, 1.0]]), b([[True, True]])
    assert ranking_loss(t([[0.0, 2.0]]), scores, mask).item() == pytest.approx(L2, abs=1e-6)
    assert ranking_loss(t([[2.0, 0.0]]), scores, mask).item() == pytest.approx(2.1269280110, abs=1e-6)


def test_batch_mean_is_over_all_pairs_not_per_list():
    # list A: scores [1, 0 | pad], rewards [2, 0 | 9]: 2 pairs of L(2) = 0.126928
    # list B: scores [2, 1, 0], rewards [0, 0, 0]: 6 pairs of L(0) = log 2 = 0.693147
    # mean over pairs = (2 * 0.126928 + 6 * 0.693147) / 8 = 0.551592
    # (mean of per-list means would be (0.126928 + 0.693147) / 2 = 0.410038)
    rewards = t([[2.0, 0.0, 9.0], [0.0, 0.0, 0.0]])
    scores = t([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0]])
    mask = b([[True, True, False], [True, True, True]])
    total, count = ranking_loss_terms(rewards, scores, mask)
    assert int(count) == 8
    assert total.item() == pytest.approx(2 * L2 + 6 * L0, abs=1e-5)
    loss = ranking_loss(rewards, scores, mask).item()
    assert loss == pytest.approx(0.5515923881, abs=1e-6)
    assert abs(loss - 0.4100375958) > 0.1


def test_no_valid_pairs_gives_zero_with_grad_path():
    rewards = t([[3.0, -1.0], [5.0, 0.0]], grad=True)
    scores = t([[1.0, 1.0], [2.0, 0.0]])
    mask = b([[True, True], [True, False]])  # a tie, and a list with one real text
    total, count = ranking_loss_terms(rewards, scores, mask)
    assert int(count) == 0
    loss = ranking_loss(rewards, scores, mask)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(rewards.grad, torch.zeros(2, 2))


def test_webgpt_float_scores():
    # scores [1.5, 0.5], rewards [0.5, 1.0] (wrong order): L(0.5 - 1.0) = log(1 + e^0.5) = 0.974077
    loss = ranking_loss(t([[0.5, 1.0]]), t([[1.5, 0.5]]), b([[True, True]]))
    assert loss.item() == pytest.approx(0.9740769842, abs=1e-6)


def test_only_the_sign_of_the_score_gap_matters():
    # scores [3.0, 0.5] (gap 2.5) with rewards [1, 0]: still L(1) = 0.313262, not L(2.5)
    loss = ranking_loss(t([[1.0, 0.0]]), t([[3.0, 0.5]]), b([[True, True]]))
    assert loss.item() == pytest.approx(L1, abs=1e-6)


def test_float64_scores_with_float32_rewards():
    # the trainer pads scores as float64; L(1) = 0.313262
    loss = ranking_loss(t([[1.0, 0.0]]), t([[1.0, 0.0]], dtype=torch.float64), b([[True, True]]))
    assert loss.item() == pytest.approx(L1, abs=1e-6)


def test_gradient_matches_sigmoid_expression():
    # scores [1, 0], rewards [1, 0]: loss = L(r0 - r1) (two equal terms, mean).
    # d/dr0 = -sigmoid(r1 - r0) = -1 / (1 + e) = -0.268941; d/dr1 = +0.268941
    rewards = t([[1.0, 0.0]], grad=True)
    ranking_loss(rewards, t([[1.0, 0.0]]), b([[True, True]])).backward()
    assert rewards.grad[0, 0].item() == pytest.approx(-0.2689414214, abs=1e-6)
    assert rewards.grad[0, 1].item() == pytest.approx(0.2689414214, abs=1e-6)


def test_gradient_three_texts():
    # scores [2, 1, 0], rewards 0: 6 ordered pairs, each unordered pair (p over q) twice, each -sigmoid(0) = -0.5
    # on the preferred reward and +0.5 on the other, divided by 6:
    # r0: 2 * 2 * -0.5 / 6 = -1/3; r1: 2 * (0.5 - 0.5) / 6 = 0; r2: 2 * 2 * 0.5 / 6 = 1/3
    rewards = t([[0.0, 0.0, 0.0]], grad=True)
    ranking_loss(rewards, t([[2.0, 1.0, 0.0]]), b([[True, True, True]])).backward()
    assert rewards.grad[0].tolist() == pytest.approx([-1 / 3, 0.0, 1 / 3], abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# LM target mask


@pytest.mark.parametrize(
    "scores, mask, expected",
    [
        # normalised [1.0, 0.9, 0.8] -> > 0.85: [T, T, F]
        ([1.0, 0.9, 0.8], [True, True, True], [True, True, False]),
        # normalised [1.0, 0.333]
        ([1.5, 0.5], [True, True], [True, False]),
        # scores in reverse order: normalised [0.5, 1.0]
        ([1.0, 2.0], [True, True], [False, True]),
        # best score not positive: nothing
        ([0.0, -1.0], [True, True], [False, False]),
        ([-1.0, -2.0], [True, True], [False, False]),
        # padding is never selected, and its score does not set the max (100 would make [F, F, F])
        ([1.0, 0.9, 100.0], [True, True, False], [True, True, False]),
        ([0.0, 0.0, 5.0], [True, True, False], [False, False, False]),
        # exactly 0.85 is not selected: 1.7 / 2.0 and 17 / 20 round to the same double as 0.85
        ([2.0, 1.7], [True, True], [True, False]),
        ([20.0, 17.0], [True, True], [True, False]),
        # just above
        ([1.0, 0.851], [True, True], [True, True]),
        # where the original's max + 1e-5 moves the boundary: 0.850005 / 1.0 = 0.850005 > 0.85 here, while the
        # original's 0.850005 / 1.00001 = 0.8499965 is not selected
        ([1.0, 0.850005], [True, True], [True, True]),
        # a tiny positive max: here 4e-5 / 4e-5 = 1.0 is selected; the original's 4e-5 / 5e-5 = 0.8 is not
        ([4e-5, 0.0], [True, True], [True, False]),
    ],
)
def test_lm_target_mask(scores, mask, expected):
    got = lm_target_mask(t([scores], dtype=torch.float64), b([mask]))
    assert got.tolist() == [expected]


def test_negative_scores_select_nothing_and_rank_the_better_text_first():
    """[-1, -2]: text 0 is the better one. The original divides by max + 1e-5 = -0.99999, which gives
    [1.00001, 2.00002]: both above 0.85 (both get the LM loss) and text 1 ranked above text 0. Our rule: the best
    score -1 is not positive, so no text is normalised or selected, and the ranking loss reads the raw scores."""
    scores, mask = t([[-1.0, -2.0]], dtype=torch.float64), b([[True, True]])
    assert lm_target_mask(scores, mask).tolist() == [[False, False]]
    # rewards [0, 1] favour the worse text. Ordered pairs (0, 1) and (1, 0): (r_j - r_i) * sign(s_j - s_i)
    # = (1 - 0) * sign(-1) = -1 and (0 - 1) * sign(+1) = -1, each L(-1) = 1 + L(1) = 1.313262; mean 1.313262.
    # (With the original's normalised scores the signs flip: L(1) = 0.313262, a reward for the wrong order.)
    loss = ranking_loss(t([[0.0, 1.0]]), scores.float(), mask)
    assert loss.item() == pytest.approx(1 + L1, abs=1e-6)


def test_lm_target_mask_batch_and_threshold():
    # per-list max: list 0 max 2 -> [1.0, 0.5]; list 1 max 4 -> [0.75, 1.0, 0 (pad)]
    scores = t([[2.0, 1.0, 0.0], [3.0, 4.0, 9.0]], dtype=torch.float64)
    mask = b([[True, True, False], [True, True, False]])
    assert lm_target_mask(scores, mask).tolist() == [[True, False, False], [False, True, False]]
    assert lm_target_mask(scores, mask, threshold=0.4).tolist() == [[True, True, False], [True, True, False]]


# ---------------------------------------------------------------------------------------------------------------
# LM loss


def test_uniform_logits_give_log_vocab():
    # V = 5, zero logits: NLL log 5 = 1.609438 per counted prediction, so every sequence's mean is log 5.
    # seq 0 length 4 -> 3 predictions; seq 1 length 2 -> 1 prediction (pad ids 2 never count)
    logits = torch.zeros(2, 4, 5)
    input_ids = torch.tensor([[0, 3, 4, 1], [0, 1, 2, 2]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    total, count = lm_loss_terms(logits, input_ids, attention, b([True, True]))
    assert int(count) == 2  # sequences, not tokens
    assert total.item() == pytest.approx(3.2188758249, abs=1e-5)  # 2 * log 5
    assert lm_loss(logits, input_ids, attention, b([True, True])).item() == pytest.approx(1.6094379124, abs=1e-6)
    # only seq 0 or only seq 1 selected: one sequence, mean log 5
    for selected in ([True, False], [False, True]):
        total, count = lm_loss_terms(logits, input_ids, attention, b(selected))
        assert int(count) == 1
        assert total.item() == pytest.approx(1.6094379124, abs=1e-5)


def test_sequences_weigh_equally_whatever_their_length():
    """The original's rule (Linear95/DSP trainer.py `language_modeling_loss`): the mean of per-sequence token means.

    V = 2. seq 0 [0, 1, 0, 1]: zero logits, 3 predictions of NLL log 2 each -> mean log 2 = 0.693147.
    seq 1 [0, 0, pad, pad] (pad id 0, masked): position 0 logits [0, log 3] -> p = [1/4, 3/4], target 0 ->
    NLL log 4 = 1.386294, 1 prediction -> mean log 4. Mean of the two means: (log 2 + log 4) / 2 = 1.5 log 2 = 1.039721.
    (One token-weighted mean would give (3 log 2 + log 4) / 4 = 1.25 log 2 = 0.866434.)
    """
    logits = torch.zeros(2, 4, 2)
    logits[1, 0, 1] = math.log(3)
    logits[1, 1:] = 1e4  # garbage where seq 1 has no prediction
    input_ids = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    total, count = lm_loss_terms(logits, input_ids, attention, b([True, True]))
    assert int(count) == 2
    assert total.item() == pytest.approx(3 * math.log(2), abs=1e-5)  # log 2 + log 4
    loss = lm_loss(logits, input_ids, attention, b([True, True]))
    assert loss.item() == pytest.approx(1.0397207708, abs=1e-6)


def test_hand_made_logits():
    # V = 3, seq [1, 0, 1, pad]:
    #   position 0 logits [log 2, 0, 0] -> p = [2/4, 1/4, 1/4], target 0 -> NLL log 2 = 0.693147
    #   position 1 logits [0, log 3, 0] -> p = [1/5, 3/5, 1/5], target 1 -> NLL log(5/3) = 0.510826
    #   position 2 predicts the pad: not counted, nor position 3 (garbage logits there)
    # sum = log(10/3) = 1.203973 over 2, mean 0.601986
    logits = torch.tensor(
        [
            [
                [math.log(2), 0.0, 0.0],
                [0.0, math.log(3), 0.0],
                [1e4, -1e4, 0.0],
                [-1e4, 1e4, 3.0],
            ]
        ]
    )
    input_ids = torch.tensor([[1, 0, 1, 2]])
    attention = torch.tensor([[1, 1, 1, 0]])
    total, count = lm_loss_terms(logits, input_ids, attention, b([True]))
    assert int(count) == 1  # one sequence; its mean is the sum
    assert total.item() == pytest.approx(0.6019864022, abs=1e-5)
    assert lm_loss(logits, input_ids, attention, b([True])).item() == pytest.approx(0.6019864022, abs=1e-6)


def test_lm_loss_gradient_on_logits():
    # one prediction, V = 2, zero logits, target 1: d NLL / d logit = softmax - onehot = [0.5, -0.5]
    logits = torch.zeros(1, 2, 2, requires_grad=True)
    lm_loss(logits, torch.tensor([[0, 1]]), torch.tensor([[1, 1]]), b([True])).backward()
    assert logits.grad[0, 0].tolist() == pytest.approx([0.5, -0.5], abs=1e-6)
    assert logits.grad[0, 1].tolist() == [0.0, 0.0]


def test_lm_loss_none_selected_is_zero():
    logits = torch.zeros(2, 3, 4, requires_grad=True)
    input_ids = torch.tensor([[0, 1, 2], [0, 3, 1]])
    attention = torch.ones(2, 3, dtype=torch.long)
    total, count = lm_loss_terms(logits, input_ids, attention, b([False, False]))
    assert int(count) == 0 and total.item() == 0.0
    loss = lm_loss(logits, input_ids, attention, b([False, False]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_lm_loss_on_bfloat16_logits_is_computed_in_float32():
    # zero logits, V = 4: NLL log 4 = 1.386294, exact in float32 up to rounding (bf16 would give 1.3828)
    logits = torch.zeros(1, 3, 4, dtype=torch.bfloat16)
    loss = lm_loss(logits, torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.long), b([True]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(1.3862943611, abs=1e-6)


def test_prediction_needs_both_tokens_real():
    # a left-padded row [pad, 0, 3, 1]: the prediction from the pad at position 0 does not count even though its
    # target is real -> 2 predictions of NLL log 5 = 1.609438 each, sum 3.218876, mean over 2 (not 3): log 5
    logits = torch.zeros(1, 4, 5)
    total, count = lm_loss_terms(logits, torch.tensor([[2, 0, 3, 1]]), torch.tensor([[0, 1, 1, 1]]), b([True]))
    assert int(count) == 1
    assert total.item() == pytest.approx(1.6094379124, abs=1e-5)

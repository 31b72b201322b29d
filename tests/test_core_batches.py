"""The shared inference batching (feedbackflow.core.batches.length_sorted_batches), on literal inputs."""

import pytest

from feedbackflow.core.batches import length_sorted_batches


def test_batches_are_sorted_by_length_with_ties_in_input_order():
    # lengths 3, 1, 2, 1, 4: by length 1 (index 1), 1 (index 3), 2 (index 2), 3 (index 0), 4 (index 4)
    items = [[7, 7, 7], [7], [7, 7], [7], [7, 7, 7, 7]]
    assert length_sorted_batches(items, 2) == [[1, 3], [2, 0], [4]]
    assert length_sorted_batches(items, 10) == [[1, 3, 2, 0, 4]]
    assert length_sorted_batches(["abc", "a"], 1) == [[1], [0]]  # anything with a length
    assert length_sorted_batches([], 4) == []


def test_a_batch_size_below_one_is_an_error():
    with pytest.raises(ValueError, match="batch_size must be at least 1, got 0"):
        length_sorted_batches([[1]], 0)

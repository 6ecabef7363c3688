"""scripts/finetune_length.py: where a fine-tuning curve settles, and the length chosen from it."""
from scripts.finetune_length import chosen_length, settled_at


def test_a_flat_curve_settles_once_two_windows_are_seen():
    assert settled_at([97.0] * 15, 5, 0.2) == 10


def test_a_rising_curve_never_settles():
    assert settled_at([90.0 + 0.1 * e for e in range(30)], 5, 0.2) is None  # the 5-mean moves 0.5 per window


def test_settling_is_the_epoch_from_which_every_later_move_is_small():
    """A curve that rises to epoch 15, then holds: settled once the window before also holds;
    a later jump of 1 point moves the answer past it."""
    curve = [90.0 + e for e in range(15)] + [104.0] * 15
    assert settled_at(curve, 5, 0.2) == 24  # epochs 20-24 and 15-19: first window pair without the rise
    jumped = curve[:26] + [105.0] * 4
    assert settled_at(jumped, 5, 0.2) is None  # still moving at the end


def test_chosen_length_is_the_latest_rounded_up_to_a_window():
    assert chosen_length([23, 12], 5) == 25
    assert chosen_length([20], 5) == 20
    assert chosen_length([23, None], 5) is None
    assert chosen_length([], 5) is None

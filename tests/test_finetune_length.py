"""scripts/finetune_length.py: where a fine-tuning curve settles, and the length chosen from it."""
from scripts.finetune_length import chosen_length, length_by_comparison, run_end, settled_at


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


def test_a_run_ends_at_the_mean_of_its_last_window():
    assert run_end([90.0, 91.0, 95.0, 97.0], 2) == 96.0
    assert run_end([96.0], 5) == 96.0


def test_the_length_chosen_is_where_longer_runs_no_longer_move_the_comparison():
    """Both methods within the tolerance and in the same order at every longer length."""
    ends = {"UVC": {10: 95.0, 20: 97.0, 30: 97.1, 40: 97.05}, "greedy": {10: 96.0, 20: 96.5, 30: 96.6, 40: 96.5}}
    assert length_by_comparison(ends, 0.2) == 20
    ends["greedy"][40] = 96.75  # moves 0.25 from 20 to 40: the comparison settles at 30
    assert length_by_comparison(ends, 0.2) == 30
    ends["greedy"][40] = 97.2  # overtakes UVC at the longest length: nothing settled
    assert length_by_comparison(ends, 0.5) is None


def test_two_methods_that_swap_places_within_the_tolerance_have_not_settled():
    ends = {"a": {10: 97.0, 20: 97.1, 30: 97.0}, "b": {10: 97.05, 20: 97.0, 30: 97.1}}
    assert length_by_comparison(ends, 0.2) is None


def test_bad_lengths_stop_with_one_line(capsys):
    import pytest
    from scripts.finetune_length import parse_args
    for bad in ("a,b", "0,10", "5", "10"):  # not numbers, a zero length, one length only
        with pytest.raises(SystemExit):
            parse_args(["--lengths", bad])
        assert "--lengths" in capsys.readouterr().err
    assert parse_args(["--lengths", "40,10,20"]).lengths == [10, 20, 40]
    with pytest.raises(SystemExit):
        parse_args(["--search_epochs", "0"])
    assert "--search_epochs 0: at least 1" in capsys.readouterr().err


def test_stage_1_runs_the_configs_epochs_unless_given():
    from scripts.finetune_length import bench_of, parse_args
    assert bench_of(parse_args(["--dataset", "digits"])).joint_extra == ["--epochs", "30"]
    assert bench_of(parse_args(["--dataset", "mnist"])).joint_extra == ["--epochs", "10"]
    assert bench_of(parse_args(["--search_epochs", "4"])).joint_extra == ["--epochs", "4"]


def test_the_committed_digits_lengths_are_what_the_docs_read():
    """log/finetune_length_digits.json (docs/results.md): 3 seeds at 30, 60 and 120 epochs, no length chosen
    (UVC's end moves by more than the tolerance from 60 to 120), the greedy fit's end ahead at 30 and 60 and
    level with UVC's at 120, both above the teacher's 98.06; the gaps as docs/results.md and the README state them."""
    import json
    import os
    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, "log", "finetune_length_digits.json")) as f:
        result = json.load(f)
    assert result["seeds"] == [730, 731, 732] and result["lengths"] == [30, 60, 120]
    assert result["chosen_epochs"] is None
    uvc, greedy = result["ends"]["UVC"], result["ends"]["greedy fit"]
    assert uvc["120"] - uvc["60"] > result["tolerance"]
    gaps = [greedy[L] - uvc[L] for L in ("30", "60", "120")]
    assert gaps[0] > 0 and gaps[1] > 0 and round(uvc["120"], 2) == round(greedy["120"], 2) > 98.06, gaps
    assert length_by_comparison({m: {int(L): e for L, e in v.items()} for m, v in result["ends"].items()},
                                result["tolerance"]) is None
    text = " ".join(open(os.path.join(root, "docs", "results.md")).read().split())
    assert (f"UVC's end still rises by {uvc['120'] - uvc['60']:.2f} from 60 to 120 epochs. The greedy fit's end is "
            f"ahead at 30 and 60 epochs (by {gaps[0]:.2f} and {gaps[1]:.2f}) and the two are level at 120 "
            f"({uvc['120']:.2f} each)") in text
    readme = " ".join(open(os.path.join(root, "README.md")).read().split())
    assert (f"at 0.5, fine-tuned 120 epochs, UVC and the greedy fit end level ({uvc['120']:.2f}, "
            "`log/finetune_length_digits.md`)") in readme


def test_the_committed_mnist_lengths_are_what_the_docs_read():
    """log/finetune_length_mnist.json (docs/results.md, configs/mnist_demo.py): MNIST at 0.4 from the
    150-epoch teacher, 3 seeds at 10, 20, 40 and 80 epochs; the length chosen is 40, the config's stage 2;
    the greedy fit's end leads at 10 and 20, UVC's at 40 and 80; UVC leads 3 of 3 seed pairs at 40, 2 at 80;
    from 40 epochs on both end within 0.35 of the teacher's last epoch (98.50)."""
    import json
    import os
    from configs.mnist_demo import get_config
    root = os.path.join(os.path.dirname(__file__), "..")
    with open(os.path.join(root, "log", "finetune_length_mnist.json")) as f:
        result = json.load(f)
    assert result["seeds"] == [730, 731, 732] and result["lengths"] == [10, 20, 40, 80] and result["budget"] == 0.4
    assert result["chosen_epochs"] == 40 == get_config("post").epochs and get_config("dense").epochs == 150
    uvc, greedy = result["ends"]["UVC"], result["ends"]["greedy fit"]
    assert [uvc[L] > greedy[L] for L in ("10", "20", "40", "80")] == [False, False, True, True]
    assert all(98.50 - e[L] <= 0.35 for e in (uvc, greedy) for L in ("40", "80"))
    ends = {(r["method"], r["seed"], r["epochs"]): run_end(r["top1"], result["window"]) for r in result["runs"]}
    ahead = {L: sum(ends[("UVC", s, L)] > ends[("greedy fit", s, L)] for s in result["seeds"]) for L in (40, 80)}
    assert ahead == {40: 3, 80: 2}
    with open(os.path.join(root, "docs", "results.md")) as f:
        doc = " ".join(f.read().split())
    for L in ("10", "20", "40", "80"):
        assert f"{uvc[L]:.2f} against {greedy[L]:.2f} at {L}" in doc
    assert " ".join(result["command"].split()[2:9]) in doc
    with open(os.path.join(root, "README.md")) as f:
        readme = " ".join(f.read().split())
    assert (f"settles at 40 epochs, where UVC's end leads the greedy fit's by {uvc['40'] - greedy['40']:.2f} "
            f"(3 seeds; {uvc['80'] - greedy['80']:.2f} at 80, behind at 10 and 20") in readme
"""The quick digits variants of the paper-2 experiments (experiments/paper2-*-digits.toml) run
end to end, exactly as shipped, and show the effects of Sehwag et al. (2019) / HYDRA that hold
robustly at this scale:

- adversarial (PGD-AT) training gives far higher PGD accuracy than standard training, and IBP
  training gives verified accuracy where the other two give none;
- pruned models keep a clear fraction of the dense model's clean, empirical-robust and verified
  accuracy at 2x and 10x when pre-training, pruning and fine-tuning share the objective;
- measured sparsity matches the target, and fine-tuning keeps the pruning masks.

HYDRA beats LWM at 100x-1000x under PGD-AT by a wide margin on digits (16-23 points over seeds and
compressions), so that is asserted too. Effects that are noisy at this scale (HYDRA vs LWM at 2-10x, fine-tuning
mismatches, exact fractions at 100x) are reported in docs/results/paper2.md from the
Fashion-MNIST runs, not asserted here.
"""

from __future__ import annotations

import pytest
from experimenthelpers import EXPERIMENTS, shipped_run

import rtk

standard = shipped_run("paper2-standard")
adversarial = shipped_run("paper2-adversarial")
verifiable = shipped_run("paper2-verifiable")
objectives = shipped_run("paper2-objectives")
high_compression = shipped_run("paper2-high-compression")


def _rows(result: rtk.RunResult):
    table = result.table("compression")
    return {row["model"]: row for _, row in table.iterrows()}, table


def _dense(table):
    return table[table["method"] == "dense"].iloc[0]


@pytest.mark.parametrize("name", ["standard", "adversarial", "verifiable", "objectives", "high-compression"])
def test_shipped_experiment_plans(name):
    exp = rtk.load_experiment(EXPERIMENTS / f"paper2-{name}-digits.toml")
    full = rtk.load_experiment(EXPERIMENTS / f"paper2-{name}.toml")
    rtk.plan(exp)
    rtk.plan(full)
    assert exp.dataset.name == "digits" and full.dataset.name == "fashion-mnist"
    assert [s.kind for s in exp.stages] == [s.kind for s in full.stages]


def test_standard_pruning_keeps_clean_accuracy(standard):
    rows, table = _rows(standard)
    assert _dense(table)["clean_acc"] > 0.9
    for method in ("lwm", "hydra"):
        for target, ratio in (("2x", 0.5), ("10x", 0.9), ("100x", 0.99)):
            row = rows[f"std-{method}-{target}"]
            assert row["sparsity"] == pytest.approx(ratio, abs=0.005)
            if target != "100x":
                assert row["clean_frac"] > 0.9, (method, target, row["clean_frac"])
    assert rows["std-channel-l2-2x"]["clean_frac"] > 0.9
    # structured pruning removes whole channels: fewer MACs, not only fewer non-zeros
    assert rows["std-channel-l2-10x"]["macs"] < 0.5 * _dense(table)["macs"]


def test_adversarial_pruning_keeps_robust_accuracy(adversarial):
    rows, table = _rows(adversarial)
    assert _dense(table)["robust_acc"] > 0.6
    for name in ("adv-lwm-2x", "adv-lwm-10x", "adv-hydra-2x", "adv-hydra-10x", "adv-channel-l2-2x"):
        assert rows[name]["robust_frac"] > 0.8, (name, rows[name]["robust_frac"])
        assert rows[name]["clean_frac"] > 0.9, (name, rows[name]["clean_frac"])


def test_hydra_beats_lwm_at_100x_under_pgd_at(adversarial):
    # the gap was 16-22 points of PGD accuracy over seeds and settings on digits; 5 is a safe floor
    rows, _ = _rows(adversarial)
    assert rows["adv-hydra-100x"]["robust_acc"] > rows["adv-lwm-100x"]["robust_acc"] + 0.05


def test_hydra_beats_lwm_beyond_100x_under_pgd_at(high_compression):
    rows, _ = _rows(high_compression)
    for target in ("300x", "1000x"):
        assert rows[f"adv-hydra-{target}"]["sparsity"] == pytest.approx(1 - 1 / int(target[:-1]), abs=0.002)
        assert rows[f"adv-hydra-{target}"]["robust_acc"] > rows[f"adv-lwm-{target}"]["robust_acc"] + 0.05, target


def test_pgd_at_beats_standard_under_pgd(standard, adversarial):
    std = _dense(standard.table("compression"))
    adv = _dense(adversarial.table("compression"))
    assert adv["robust_acc"] > std["robust_acc"] + 0.15
    # and the pruned PGD-AT models stay more robust than the pruned standard ones
    std_rows, _ = _rows(standard)
    adv_rows, _ = _rows(adversarial)
    for m in ("lwm-2x", "lwm-10x", "hydra-10x"):
        assert adv_rows[f"adv-{m}"]["robust_acc"] > std_rows[f"std-{m}"]["robust_acc"] + 0.1


def test_verifiable_pruning_keeps_verified_accuracy(verifiable):
    rows, table = _rows(verifiable)
    dense = _dense(table)
    assert dense["verified_acc"] > 0.4
    assert dense["verified_acc"] <= dense["robust_acc"] + 1e-9  # a verified point resists every attack
    for name in ("ver-lwm-2x", "ver-lwm-10x", "ver-hydra-2x", "ver-hydra-10x"):
        assert rows[name]["verified_frac"] > 0.8, (name, rows[name]["verified_frac"])
        assert rows[name]["verified_acc"] <= rows[name]["robust_acc"] + 1e-9


def test_objectives_grid(objectives):
    wc = objectives.table("worst_case").set_index("model")
    ver = objectives.table("verified").set_index("model")["verified_accuracy"]
    pgd = wc["accuracy"]
    # dense: each objective wins on its own measure
    assert pgd["adv"] > pgd["std"] + 0.15
    assert ver["ver"] > 0.3 and ver["ver"] > ver["adv"] + 0.2 and ver["ver"] > ver["std"] + 0.2
    # pruned 10x and fine-tuned with the matching objective: the same ordering holds
    assert pgd["adv-adv"] > pgd["std-std"] + 0.15
    assert ver["ver-ver"] > ver["adv-adv"] + 0.2 and ver["ver-ver"] > ver["std-std"] + 0.2


def test_fine_tuning_keeps_the_pruning_mask(objectives):
    from rtk.models import load_checkpoint

    model, _, _ = load_checkpoint(objectives.path / "checkpoints" / "adv-adv" / "last")
    layers = dict(model.named_modules())
    for name in ("conv2", "fc1"):
        w = layers[name].weight.detach()
        assert (w == 0).float().mean().item() == pytest.approx(0.9, abs=0.01), name

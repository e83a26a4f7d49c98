"""The evaluation engine on real data (digits): robust accuracy, worst case, records,
resume after an interruption, merging shards, early exit, streaming, curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from evalhelpers import attack, cached_digits_cnn, train_digits_cnn

import rtk
from rtk.evaluation import (
    AttackUnit,
    RecordStore,
    evaluate,
    function_units,
    make_units,
    merge_records,
    plot_curves,
    robust_accuracy,
    shard_indices,
)
from rtk.evaluation import engine as engine_mod


@pytest.fixture(scope="module")
def model(digits, tmp_path_factory):
    return cached_digits_cnn(digits, tmp_path_factory)


def test_pgd_lowers_accuracy_and_a_large_eps_drives_it_to_zero(model, digits):
    units = make_units([attack("pgd", steps=10)], eps=["4/255", "16/255", 0.5])
    res = evaluate(model, digits.test, units, checks=False)
    assert res.clean_accuracy > 0.9
    curve = res.worst_case.set_index("eps")["accuracy"]
    small, mid, large = curve.iloc[0], curve.iloc[1], curve.iloc[2]
    assert small <= res.clean_accuracy and mid < res.clean_accuracy - 0.05
    assert large <= 0.02, f"PGD at eps=0.5 leaves {large:.3f}"
    assert list(curve) == sorted(curve, reverse=True)  # monotone in eps
    acc = res.accuracy
    assert set(acc.attack) == {"clean", "pgd", "worst_case"}
    assert (acc.loc[acc.attack == "pgd", "accuracy"].to_numpy() <= res.clean_accuracy).all()


def test_worst_case_is_per_example_and_uses_evidence_across_budgets(model, digits):
    units = make_units([attack("fgsm"), attack("pgd", steps=5, random_start=False)], eps=["8/255", "24/255"])
    res = evaluate(model, digits.test, units, checks=False)
    o = res.outcomes
    for norm, eps in res.threats:
        robust = o.robust_at(norm, eps, res.tol)
        # robust only if clean-correct and no attack of the suite broke it within eps
        for u in o.units:
            if u.unit.eps <= eps:
                assert not (robust & u.broken).any()
        per_attack = [float((o.clean_correct & ~u.broken).mean()) for u in o.units if u.unit.eps == eps]
        assert robust.mean() <= min(per_attack) + 1e-12
    # an example broken at 8/255 counts as broken at 24/255 even if the 24/255 runs missed it
    u8 = [u for u in o.units if u.unit.eps < 0.1]
    broken8 = np.logical_or.reduce([u.broken for u in u8])
    assert not (o.robust_at("Linf", 24 / 255, res.tol) & broken8).any()
    per = res.per_example
    assert set(per.status) <= {"robust", "broken", "clean_wrong", "skipped", "invalid"}
    assert len(per) == len(o.indices) * len(units)
    broke = per[per.status == "broken"]
    assert (broke.adv_pred != broke.label).all() and (broke.delta <= broke.eps + 1e-5).all()


def test_records_resume_after_an_interruption(model, digits, tmp_path, monkeypatch):
    units = make_units([attack("pgd", steps=3), attack("fgsm")])
    idx = torch.arange(0, 300)
    full = evaluate(
        model, digits.test, units, indices=idx, batch_size=64, store=RecordStore(tmp_path / "a"), checks=False
    )
    calls = {"n": 0}
    real_build = AttackUnit.build

    def flaky_build(self, m):
        fn = real_build(self, m)

        def attack_fn(x, y):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt  # the process is stopped in the middle of the third batch
            return fn(x, y)

        return attack_fn

    monkeypatch.setattr(AttackUnit, "build", flaky_build)
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, digits.test, units, indices=idx, batch_size=64, store=RecordStore(tmp_path / "b"), checks=False)
    partial = RecordStore(tmp_path / "b").table()
    assert 0 < len(partial) < len(full.records)
    calls["n"] = -(10**9)  # no more interruptions
    res = evaluate(
        model, digits.test, units, indices=idx, batch_size=64, store=RecordStore(tmp_path / "b"), checks=False
    )
    assert res.resumed == len(partial)
    pd.testing.assert_frame_equal(res.accuracy, full.accuracy)
    assert len(list((tmp_path / "b" / "records").glob("part-*.jsonl"))) == 2  # one part file per writer


def test_a_torn_last_line_is_ignored(model, digits, tmp_path):
    units = make_units([attack("fgsm")])
    evaluate(model, digits.test, units, indices=range(100), batch_size=50, store=RecordStore(tmp_path), checks=False)
    part = next((tmp_path / "records").glob("part-*.jsonl"))
    text = part.read_text()
    part.write_text(text[: len(text) - 40])  # the write of the last chunk was cut short
    res = evaluate(
        model, digits.test, units, indices=range(100), batch_size=50, store=RecordStore(tmp_path), checks=False
    )
    assert 0 < res.resumed < 200 and len(res.outcomes.indices) == 100


def test_shards_by_index_merge_into_the_full_evaluation(model, digits, tmp_path, monkeypatch):
    units = make_units([attack("pgd", steps=3)], eps=["8/255", "16/255"])
    idx = torch.arange(200)
    whole = evaluate(model, digits.test, units, indices=idx, batch_size=50, checks=False)
    for rank in range(2):  # two processes, each its own directory, each every other batch
        shard = shard_indices(idx, 50, rank, 2)
        assert len(shard) == 100
        evaluate(
            model,
            digits.test,
            units,
            indices=shard,
            batch_size=50,
            store=RecordStore(tmp_path / f"rank{rank}"),
            checks=False,
        )
    merged = merge_records([tmp_path / "rank0", tmp_path / "rank1"])
    assert len(merged) == 200 * 3 and merged["index"].nunique() == 200

    def no_attacks(self, m):
        raise AssertionError("a merged evaluation must not attack again")

    monkeypatch.setattr(AttackUnit, "build", no_attacks)
    res = evaluate(
        model,
        digits.test,
        units,
        indices=idx,
        batch_size=50,
        checks=False,
        store=RecordStore(tmp_path / "gather", extra=[tmp_path / "rank0", tmp_path / "rank1"]),
    )
    pd.testing.assert_frame_equal(res.accuracy, whole.accuracy)
    pd.testing.assert_frame_equal(res.worst_case, whole.worst_case)


def test_records_of_another_model_are_not_reused(model, digits, tmp_path):
    units = make_units([attack("fgsm")])
    evaluate(model, digits.test, units, indices=range(64), store=RecordStore(tmp_path), checks=False)
    other = train_digits_cnn(digits, epochs=1)
    res = evaluate(other, digits.test, units, indices=range(64), store=RecordStore(tmp_path), checks=False)
    assert res.resumed == 0


def test_early_exit_keeps_the_worst_case_and_reports_honestly(model, digits):
    units = make_units([attack("pgd", steps=5), attack("fgsm")], eps=["16/255"])
    full = evaluate(model, digits.test, units, checks=False)
    fast = evaluate(model, digits.test, units, checks=False, early_exit=True)
    assert fast.headline_accuracy == pytest.approx(full.headline_accuracy)
    a = fast.accuracy.set_index("attack")
    assert math.isnan(a.loc["fgsm", "accuracy"]) and not math.isnan(a.loc["pgd", "accuracy"])
    assert a.loc["fgsm", "attacked"] < full.accuracy.set_index("attack").loc["fgsm", "attacked"]
    assert a.loc["fgsm", "cumulative"] == pytest.approx(full.accuracy.set_index("attack").loc["fgsm", "cumulative"])


def test_misclassified_examples_are_never_attacked(model, digits):
    seen = []

    def spy(x, y):
        seen.append(len(x))
        return x

    res = evaluate(model, digits.test, function_units([("identity", spy)]), checks=False)
    assert sum(seen) == int(res.outcomes.clean_correct.sum())
    assert res.accuracy.set_index("attack").loc["identity", "accuracy"] == pytest.approx(res.clean_accuracy)


class CountingSplit(torch.utils.data.Dataset):
    """A dataset that is not held in memory by the engine: items are fetched one by one."""

    def __init__(self, split) -> None:
        self.split, self.fetched = split, 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i):
        self.fetched += 1
        return self.split.x[i], int(self.split.y[i])


def test_streams_batch_by_batch(model, digits, monkeypatch):
    sizes = []
    real = engine_mod.load_batch

    def spy(split, idx):
        sizes.append(len(idx))
        return real(split, idx)

    monkeypatch.setattr(engine_mod, "load_batch", spy)
    split = CountingSplit(digits.test)
    res = evaluate(model, split, make_units([attack("fgsm")]), batch_size=32, checks=False)
    assert max(sizes) <= 32 and len(sizes) == math.ceil(len(split) / 32)
    assert split.fetched == len(split)
    ref = evaluate(model, digits.test, make_units([attack("fgsm")]), batch_size=32, checks=False)
    assert res.clean_accuracy == ref.clean_accuracy and res.headline_accuracy == ref.headline_accuracy


def test_robust_accuracy_dict_interface(model, digits):
    spec, opts, _ = attack("pgd", eps=0.2, steps=5)
    pgd = spec.build(model, opts)
    out = robust_accuracy(model, digits.test, [("pgd", pgd), ("noop", lambda x, y: x)], batch_size=128)
    assert set(out) == {"clean", "pgd", "noop", "worst_case"}
    assert out["noop"] == pytest.approx(out["clean"])
    assert out["worst_case"] == pytest.approx(out["pgd"]) and out["pgd"] < out["clean"]


def test_suite_construction_errors():
    with pytest.raises(rtk.ConfigError, match="mixes norms"):
        make_units([attack("pgd"), attack("pgd-l2")], eps=[0.1])
    units = make_units([attack("pgd"), attack("pgd-l2")], eps={"Linf": ["8/255"], "L2": [0.5, 1.0]})
    assert [(u.norm, round(u.eps, 4)) for u in units] == [("Linf", 0.0314), ("L2", 0.5), ("L2", 1.0)]
    with pytest.raises(rtk.ConfigError, match="twice"):
        make_units([attack("pgd"), attack("pgd")])
    with pytest.raises(rtk.ConfigError, match="eps"):
        make_units([attack("pgd")], eps=[2.0])  # Linf eps above 1 is rejected by the attack's options
    assert make_units([attack("cw-l2")])[0].budgeted is False


def test_plot_is_written_for_several_eps(model, digits, tmp_path):
    res = evaluate(
        model,
        digits.test,
        make_units([attack("fgsm")], eps=["4/255", "8/255", "16/255"]),
        indices=range(120),
        checks=False,
    )
    path = plot_curves(res.worst_case, res.accuracy, tmp_path / "curve.png")
    assert path is not None and path.stat().st_size > 5000
    single = evaluate(model, digits.test, make_units([attack("fgsm")]), indices=range(50), checks=False)
    assert plot_curves(single.worst_case, single.accuracy, tmp_path / "none.png") is None


def test_a_stage_limit_larger_than_the_split_is_said_not_silently_capped(caplog):
    """Issue 15 item 9: an evaluation limit beyond the data uses all of it and says so."""
    with caplog.at_level("WARNING", logger=engine_mod.log.name):
        idx = engine_mod.eval_indices(10, limit=50, seed=0)
    assert idx.tolist() == list(range(10))
    assert "limit = 50 is larger than the 10 examples" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger=engine_mod.log.name):
        assert len(engine_mod.eval_indices(10, limit=4, seed=0)) == 4
    assert caplog.text == ""
    with pytest.raises(rtk.DataError, match="positive"):
        engine_mod.eval_indices(10, limit=0)

"""The runner, DDP training, sharded evaluation and minibatch CKA under 2 gloo processes,
each compared against a single process.

Two spawned workers join a gloo process group on a free local port (``rtk.distributed.session``),
as ``torchrun`` workers would, and are reused by the tests of this module. Single-process
references run in the test process with one thread, like the workers, so both sides do the
same arithmetic. Every task is bounded by a deadline; the workers are terminated at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from disthelpers import WORLD, workers_fixture

import rtk
import rtk.distributed as rd

DEADLINE_S = 90.0


workers = workers_fixture(DEADLINE_S)


@pytest.fixture
def one_thread():
    """Single-process references with the workers' thread count (same arithmetic)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- the experiment
def _experiment(out_checkpoint: str | None = None) -> dict:
    """Train (global batch 64) -> evaluate (2 attacks, per-example table) -> minibatch CKA.
    With ``out_checkpoint``: only evaluate and similarity, on that checkpoint, with the seed
    shifted by one so each stage's seed (experiment seed + stage index) is the same."""
    model = {"arch": "cnn-small"} if out_checkpoint is None else {"arch": "cnn-small", "checkpoint": out_checkpoint}
    train = {
        "kind": "train",
        "id": "train",
        "model": "net",
        "trainer": "standard",
        "epochs": 2,
        "lr": 0.05,
        "batch_size": 64,
        "eval_size": 0,
        "eval_train_size": 0,
        "monitor": "test_clean_acc",
    }
    evaluate = {
        "kind": "evaluate",
        "id": "eval",
        "models": ["net"],
        "batch_size": 64,
        "attacks": ["fgsm", {"name": "pgd", "steps": 3}],
        "eps": [0.1],
        "per_example": True,
        "checks": False,
        "plot": False,
    }
    similarity = {
        "kind": "similarity",
        "id": "sim",
        "models": ["net"],
        "analyses": ["heatmap"],
        "metric": {"name": "minibatch-cka", "batch_size": 64},
    }
    stages = ([train] if out_checkpoint is None else []) + [evaluate, similarity]
    seed = 3 if out_checkpoint is None else 4
    return {
        "name": "ddp",
        "seed": seed,
        "dataset": {"name": "digits", "limit_train": 320, "limit_test": 200},
        "models": {"net": model},
        "stages": stages,
    }


def _run_experiment(rank: int, out: str, log_dir: str) -> None:
    """Every rank runs the same experiment into one --out; rank 1 records any file it
    replaces inside the run directory (every rtk write is an atomic replace)."""
    from rtk import experiment_from_dict

    written: list[str] = []
    real_replace = os.replace

    def spy(src, dst, *a, **k):
        if str(Path(dst).resolve()).startswith(str(Path(out).resolve())):
            written.append(str(dst))
        return real_replace(src, dst, *a, **k)

    os.replace = spy
    try:
        exp = experiment_from_dict(_experiment(), source="<dict>", base_dir=Path(out).parent)
        result = rtk.execute(rtk.plan(exp), out=out)
    finally:
        os.replace = real_replace
    assert rd.is_initialized()  # the runner joined the existing group and left it alive
    Path(log_dir, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "path": str(result.path),
                "written": written,
                "tables": sorted(result.tables),
                "rows": len(result.table("eval/per_example")),
            }
        )
    )


def test_run_under_two_ranks_equals_one_process(workers, tmp_path, one_thread):
    out = tmp_path / "run2"
    logs = tmp_path / "logs"
    logs.mkdir()
    workers.run(_run_experiment, str(out), str(logs))
    info = [json.loads((logs / f"rank{r}.json").read_text()) for r in range(WORLD)]
    # one run directory, created by rank 0, known to every rank; rank 1 wrote nothing in it
    assert {i["path"] for i in info} == {str(out)}
    assert info[1]["written"] == []
    assert info[0]["written"], "rank 0 should have written the run directory"
    assert info[0]["tables"] == info[1]["tables"] and info[0]["rows"] == info[1]["rows"] > 0
    assert len(list((out / "artifacts" / "eval" / "records").glob("part-*.jsonl"))) == 1
    assert json.loads((out / "environment.json").read_text())["distributed"]["world_size"] == WORLD
    state = json.loads((out / "state.json").read_text())
    assert all(s["status"] == "completed" for s in state["stages"].values())
    hist = pd.read_csv(out / "tables" / "train" / "history.csv")
    assert list(hist.epoch) == [1, 2] and hist.train_loss.iloc[1] < hist.train_loss.iloc[0]

    # the same evaluation and CKA of the trained checkpoint in one process
    ckpt = str(out / state["models"]["net"]["checkpoints"]["current"])  # stored relative to the run directory
    one = rtk.run(_experiment(out_checkpoint=ckpt), out=tmp_path / "run1")
    two_pe = pd.read_csv(out / "tables" / "eval" / "per_example.csv")
    one_pe = one.table("eval/per_example").reset_index(drop=True)
    pd.testing.assert_frame_equal(two_pe, pd.read_csv(tmp_path / "run1" / "tables" / "eval" / "per_example.csv"))
    assert (
        len(one_pe) == len(two_pe) == info[0]["rows"] == 2 * len(one_pe["index"].unique())
    )  # one row per example and attack
    for name in ("accuracy", "worst_case"):
        pd.testing.assert_frame_equal(
            pd.read_csv(out / "tables" / "eval" / f"{name}.csv"),
            pd.read_csv(tmp_path / "run1" / "tables" / "eval" / f"{name}.csv"),
        )
    h2 = pd.read_csv(out / "tables" / "sim" / "heatmaps.csv")
    h1 = pd.read_csv(tmp_path / "run1" / "tables" / "sim" / "heatmaps.csv")
    value = [c for c in h1.columns if h1[c].dtype.kind == "f"]
    assert value and len(h1) == len(h2) > 1
    keys = [c for c in h1.columns if c not in value]
    pd.testing.assert_frame_equal(h2[keys], h1[keys])
    assert (h2[value] - h1[value]).abs().to_numpy().max() <= 1e-6
    assert h1[value].to_numpy().std() > 0.01  # a real heatmap, not a constant


# ---------------------------------------------------------------------------- DDP training
def _data(n_train: int = 201):
    """Digits with 201 training examples: global batch 64 leaves a last batch of 9 (4 + 5
    over two ranks), so the loss weights of an uneven batch are exercised."""
    from rtk.data.core import apply_limits

    spec = rtk.default_registry().get("dataset", "digits")
    opts = spec.options(limit_train=n_train, limit_test=100)
    return apply_limits(spec.load(opts), opts)


class _Interrupt(Exception):
    pass


def _stop_after(epoch_: int):
    def on_epoch(epoch: int, row: dict) -> None:
        if epoch == epoch_:
            raise _Interrupt(f"stopped after epoch {epoch}")

    return on_epoch


def _train(
    world: int, rank: int, sink: str | None = None, *, state_dir: str | None = None, interrupt: int | None = None
) -> tuple[dict, list[float]]:
    from rtk.training import LoopConfig, StandardObjective, train_model

    data = _data()
    torch.manual_seed(0)
    model = (
        rtk.default_registry()
        .get("model", "cnn-small")
        .build(data.info, rtk.default_registry().get("model", "cnn-small").options())
    )
    sampler = rd.DistributedBatchSampler(len(data.train), 64 // world, seed=5, rank_=rank, world=world)
    cfg = LoopConfig(
        epochs=3, lr=0.05, batch_size=64 // world, eval_size=0, eval_train_size=0, monitor="test_clean_acc"
    )
    kw = dict(
        seed=5, epoch_indices=sampler.epoch_indices, batch_weights=sampler.weights, plot=False, state_dir=state_dir
    )
    wrapped = rd.wrap_model(model, "cpu")
    if interrupt is not None:  # interrupted after an epoch, then resumed from rank 0's saved state
        with pytest.raises(_Interrupt):
            train_model(wrapped, StandardObjective(), data, cfg, on_epoch=_stop_after(interrupt), **kw)
        rd.barrier()
        torch.manual_seed(123)
        model = (
            rtk.default_registry()
            .get("model", "cnn-small")
            .build(data.info, rtk.default_registry().get("model", "cnn-small").options())
        )  # a fresh model: everything comes from the saved state
        wrapped = rd.wrap_model(model, "cpu")
    res = train_model(wrapped, StandardObjective(), data, cfg, resume=interrupt is not None, **kw)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses = res.history.train_loss.tolist()
    if sink is not None:
        torch.save({"state": state, "losses": losses}, Path(sink) / f"rank{rank}.pt")
    return state, losses


def _train_ddp(rank: int, sink: str) -> None:
    _train(WORLD, rank, sink)
    # the same training interrupted after epoch 2 and resumed (state written by rank 0 only)
    state_dir = Path(sink) / "state"
    resumed, losses = _train(WORLD, rank, None, state_dir=str(state_dir), interrupt=2)
    torch.save({"state": resumed, "losses": losses}, Path(sink) / f"resumed{rank}.pt")


def test_ddp_training_follows_single_process(workers, tmp_path, one_thread):
    workers.run(_train_ddp, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    ref_state, ref_losses = _train(1, 0)
    # every rank holds the same weights and records the same (all-reduced) history
    for k in ref_state:
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]), k
    assert ranks[0]["losses"] == ranks[1]["losses"]
    # DDP with global batch 64 = one process with batch 64, up to float32 reduction order
    # (stated tolerance: 1e-4 on weights and epoch losses after 3 epochs, 12 steps)
    worst = max(float((ranks[0]["state"][k].float() - v.float()).abs().max()) for k, v in ref_state.items())
    assert worst < 1e-4, worst
    assert ranks[0]["losses"] == pytest.approx(ref_losses, abs=1e-4)
    assert ref_losses[-1] < ref_losses[0]
    # resume under DDP continues exactly where the interrupted run stopped
    for r in range(WORLD):
        resumed = torch.load(tmp_path / f"resumed{r}.pt", weights_only=True)
        assert resumed["losses"] == ranks[r]["losses"]
        for k, v in ranks[r]["state"].items():
            assert torch.equal(resumed["state"][k], v), (r, k)


def test_non_divisible_global_batch_is_refused(workers, tmp_path):
    workers.run(_refuse_odd_batch, str(tmp_path))


def _refuse_odd_batch(rank: int, tmp: str) -> None:
    exp = _experiment()
    exp["stages"] = [dict(exp["stages"][0], batch_size=63)]
    with pytest.raises(rtk.StageError, match="divisible by the number of processes"):
        rtk.run(exp, out=Path(tmp) / "odd")

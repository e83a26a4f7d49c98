"""rtk.distributed on CPU with gloo: 2 real processes compared against a single process.

Multi-process tests run on two spawned workers that join a gloo process group on a free
local port through ``rtk.distributed.session`` and are reused by every test of this module
(start-up dominates); every task is bounded by a deadline, and after a failure the workers
are terminated and restarted. At the end each worker reports that its session destroyed the
process group.
Each worker that needs a single-process reference computes it itself (rank 0, same thread
settings) so the comparison sees the same arithmetic.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from disthelpers import WORLD, workers_fixture
from torch import nn

import rtk
import rtk.cli.launch as rtk_launch
import rtk.distributed as rd
from rtk.cli.launch import launch, torchrun_command
from rtk.errors import RtkError

DEADLINE_S = 60.0


workers = workers_fixture(DEADLINE_S)


# ---------------------------------------------------------------------------- single process: pure logic
@pytest.mark.parametrize("mode,align", [("contiguous", 1), ("strided", 1), ("contiguous", 64), ("contiguous", 7)])
def test_shard_indices_cover_every_index_once(mode, align):
    for n in (0, 1, 3, 10, 449, 1000):
        for world in (1, 2, 3, 8):
            shards = [rd.shard_indices(n, r, world, mode=mode, align=align) for r in range(world)]
            flat = torch.cat(shards)
            assert sorted(flat.tolist()) == list(range(n)), (n, world)
            assert all(
                torch.equal(s, rd.shard_indices(n, r, world, mode=mode, align=align)) for r, s in enumerate(shards)
            )
            sizes = [len(s) for s in shards]
            assert max(sizes) - min(sizes) <= align, sizes  # balanced up to one block
            if mode == "contiguous":
                assert all(len(s) == 0 or torch.equal(s, torch.arange(int(s[0]), int(s[-1]) + 1)) for s in shards)
                starts = [int(s[0]) for s in shards if len(s)]
                assert all(st % align == 0 for st in starts)
    with pytest.raises(ValueError, match="rank"):
        rd.shard_indices(10, 2, 2)
    with pytest.raises(ValueError, match="mode"):
        rd.shard_indices(10, 0, 2, mode="random")


def test_sampler_splits_the_single_process_global_batches():
    n, per_rank = 203, 16  # 203 = 6 full global batches of 32 + 11 left over (split 5 / 6)
    single = rd.DistributedBatchSampler(n, per_rank * WORLD, seed=3, rank_=0, world=1)
    ranks = [rd.DistributedBatchSampler(n, per_rank, seed=3, rank_=r, world=WORLD) for r in range(WORLD)]
    assert single.global_batch_size == ranks[0].global_batch_size == 32
    for epoch in (0, 1):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        ref = list(single.batches())
        parts = [list(s.batches()) for s in ranks]
        assert len(ref) == len(ranks[0]) == len(ranks[1]) == 7
        for step, b in enumerate(ref):
            got = [p[step] for p in parts]
            assert torch.equal(torch.cat([g.indices for g in got]), b.indices)
            assert all(g.global_size == len(b.indices) for g in got)
            # DDP averages w_r * mean_r over ranks: w_r / (world n_r) = 1 / global gives the global mean
            assert all(g.weight / (WORLD * len(g.indices)) == pytest.approx(1 / len(b.indices)) for g in got)
        assert [len(g.indices) for g in parts[0][-1:] + parts[1][-1:]] == [5, 6]
        assert [g.weight for g in parts[0][:-1]] == [1.0] * 6
    flat = ranks[1].epoch_indices(1)  # the training loop's hook: sliced by batch_size = the steps
    assert [c.tolist() for c in flat.split(per_rank)] == [b.indices.tolist() for b in parts[1]]
    assert ranks[1].weights(1) == [b.weight for b in parts[1]]
    e0 = [b.indices for b in single.batches()]
    single.set_epoch(0)
    assert not torch.equal(torch.cat(e0), torch.cat([b.indices for b in single.batches()])), "epochs must reshuffle"
    # fewer leftover examples than ranks: the partial global batch is dropped on every rank
    tiny = [rd.DistributedBatchSampler(33, 16, rank_=r, world=2) for r in range(2)]
    assert len(tiny[0]) == len(tiny[1]) == 1
    assert len(rd.DistributedBatchSampler(203, 16, rank_=0, world=2, drop_last=True)) == 6


def test_single_process_helpers_are_identities(monkeypatch, digits):
    for k in rd.TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    assert rd.init_from_env() is False
    with rd.session() as info:
        assert (info.rank, info.world_size, info.distributed, info.main) == (0, 1, False, True)
    assert not rd.is_distributed() and rd.is_main() and rd.world_size() == 1
    t = torch.arange(4, dtype=torch.float64)
    out = rd.all_reduce_sum(t)
    assert out.dtype == torch.float64 and torch.equal(out, t) and out is not t
    model = nn.Linear(3, 2)
    assert rd.wrap_model(model, "cpu") is model
    assert rd.unwrap(nn.DataParallel(model)) is model
    assert rd.rank_seed(5) == 5 and rd.rank_seed(5, 1) != rd.rank_seed(5, 2) != 5

    @rd.main_process_only
    def write(path):
        Path(path).write_text("x")
        return 7

    assert write(os.devnull) == 7
    df = pd.DataFrame({"index": [2, 0, 1], "v": [20, 0, 10]})
    merged = rd.gather_table(df, n=3)
    assert merged["v"].tolist() == [0, 10, 20] and merged["index"].tolist() == [0, 1, 2]
    with pytest.raises(RtkError, match="more than once"):
        rd.gather_table(pd.DataFrame({"index": [0, 0, 1]}))
    with pytest.raises(RtkError, match="missing"):
        rd.gather_table(pd.DataFrame({"index": [0, 2]}), n=3)
    # long tables (one row per example and attack) are keyed by (index, unit)
    long = pd.DataFrame({"index": [7, 2, 7, 2], "unit": ["pgd", "clean", "clean", "pgd"], "ok": [1, 0, 1, 1]})
    merged = rd.gather_table(long, key=("index", "unit"), expected=[2, 7])
    assert list(zip(merged["index"], merged["unit"])) == [(2, "clean"), (2, "pgd"), (7, "clean"), (7, "pgd")]
    with pytest.raises(RtkError, match="more than once"):
        rd.gather_table(pd.concat([long, long.tail(1)]), key=("index", "unit"))
    with pytest.raises(RtkError, match="unexpected"):
        rd.gather_table(long, key=("index", "unit"), expected=[2, 3])
    # a real (world 1) gloo group in this process: created, reused, destroyed by session()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(rd.free_port()))
    with rd.session(timeout=20) as info:
        assert rd.is_initialized() and info.backend == "gloo" and not info.distributed
        assert rd.init_from_env() is True  # idempotent
        with rd.session() as inner:
            assert inner == info
        assert rd.is_initialized(), "an inner session must not destroy the outer one's group"
        assert rd.all_reduce_sum(t).dtype == torch.float64
    assert not rd.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(rtk.ConfigError, match="MASTER_ADDR"):
        rd.init_from_env()
    with pytest.raises(rtk.ConfigError, match="already running under torchrun"):
        launch(["plugins"], 2)


# ---------------------------------------------------------------------------- collectives
def _collectives(rank: int, out: str) -> None:
    acc = torch.tensor([1e16 * (rank + 1), 1.0 + rank * 1e-12], dtype=torch.float64)
    s = rd.all_reduce_sum(acc)
    assert s.dtype == torch.float64
    assert s.tolist() == [3e16, 2.0 + 1e-12]  # float32 would lose both
    sums = rd.all_reduce_sums(
        {
            "a": torch.full((2, 2), rank + 1.0, dtype=torch.float64),
            "n": torch.tensor(rank + 1),
            "ok": torch.tensor([True, rank == 0]),
        }
    )
    assert sums["a"].tolist() == [[3.0, 3.0], [3.0, 3.0]] and int(sums["n"]) == 3 and sums["ok"].tolist() == [2, 1]
    assert rd.broadcast_object({"dir": f"runs/r{rank}"}) == {"dir": "runs/r0"}

    @rd.main_process_only(broadcast=True)
    def pick() -> str:
        return f"chosen-by-{rd.rank()}"

    assert pick() == "chosen-by-0"

    @rd.main_process_only
    def write() -> str:
        Path(out, f"written-by-{rd.rank()}").write_text("x")
        return "done"

    assert write() == ("done" if rank == 0 else None)
    rd.barrier()
    assert sorted(p.name for p in Path(out).glob("written-by-*")) == ["written-by-0"]

    @rd.main_process_only(broadcast=True)
    def fails() -> None:
        raise ValueError("disk full")

    try:
        fails()
        raise AssertionError("an error on rank 0 must reach every rank")
    except (ValueError, RtkError) as exc:
        assert "disk full" in str(exc)
    # overlapping shards are caught when merging
    dup = pd.DataFrame({"index": [0, 1], "v": [rank, rank]})
    if rank == 0:
        try:
            rd.gather_table(dup)
            raise AssertionError("duplicate indices must be rejected")
        except RtkError as exc:
            assert "more than once" in str(exc)
    else:
        assert rd.gather_table(dup) is None


def test_collectives_on_two_processes(tmp_path, workers):
    workers.run(_collectives, str(tmp_path))


# ---------------------------------------------------------------------------- sharded evaluation
HIDDEN = (64,)


def _per_example(model, attack, split, indices: torch.Tensor, batch_size: int) -> pd.DataFrame:
    """Clean and PGD predictions, losses and correctness for ``indices`` (dataset order)."""
    rows = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        x, y = split.x[idx], split.y[idx]
        with torch.no_grad():
            logits = model(x)
        x_adv = attack(x, y)
        with torch.no_grad():
            adv_logits = model(x_adv)
        rows.append(
            pd.DataFrame(
                {
                    "index": idx.numpy(),
                    "label": y.numpy(),
                    "pred": logits.argmax(1).numpy(),
                    "loss": nn.functional.cross_entropy(logits, y, reduction="none").numpy(),
                    "adv_pred": adv_logits.argmax(1).numpy(),
                    "adv_loss": nn.functional.cross_entropy(adv_logits, y, reduction="none").numpy(),
                    "linf": (x_adv - x).abs().flatten(1).amax(1).numpy(),
                }
            )
        )
    df = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["index"])
    df["correct"] = df["pred"] == df["label"]
    df["adv_correct"] = df["adv_pred"] == df["label"]
    return df


def _eval_setup(weights: str):
    from safetensors.torch import load_file

    from rtk.data.digits import load_digits

    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))
    data = load_digits()
    mspec = reg.get("model", "mlp")
    model = mspec.build(data.info, mspec.options(hidden=list(HIDDEN)))
    model.load_state_dict(load_file(weights))
    model.eval()
    aspec = reg.get("attack", "pgd")
    attack = aspec.build(model, rtk.validate_options(aspec.options, {"eps": "0.1", "steps": 5, "seed": 11}, "attack"))
    return data.test, model, attack


def _sharded_eval(rank: int, weights: str, out: str, batch_size: int) -> None:
    split, model, attack = _eval_setup(weights)
    n = len(split)
    shard = rd.shard_indices(n, align=batch_size)
    assert 0 < len(shard) < n
    local = _per_example(model, attack, split, shard, batch_size)
    table = rd.gather_table(local, n=n)
    # the same per-example tensors through tensor gathers (strided shards, no pickling)
    strided = rd.shard_indices(n, mode="strided")
    x = split.x[strided]
    with torch.no_grad():
        logits = model(x)
    tens = rd.gather_tensors({"logits": logits, "correct": logits.argmax(1) == split.y[strided]}, strided, n=n)
    if rank == 0:
        reference = _per_example(model, attack, split, torch.arange(n), batch_size)
        table.to_parquet(Path(out, "gathered.parquet"))
        reference.to_parquet(Path(out, "single.parquet"))
        with torch.no_grad():
            ref_logits = model(split.x)
        torch.save(
            {
                "logits": tens["logits"],
                "correct": tens["correct"],
                "index": tens["index"],
                "ref_logits": ref_logits,
                "ref_correct": ref_logits.argmax(1) == split.y,
            },
            Path(out, "tensors.pt"),
        )
    else:
        assert table is None and tens is None


def test_sharded_evaluation_equals_single_process(tmp_path, digits, workers):
    from safetensors.torch import save_file

    from rtk.models.small import mlp

    torch.manual_seed(0)
    model = mlp(digits.info, hidden=HIDDEN)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(2):
        for x, y in rtk.data.batches(digits.train, 64, shuffle=True, generator=torch.Generator().manual_seed(epoch)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    n, batch = len(digits.test), 64
    assert n % batch != 0  # a partial last batch; with align=batch the two shards are uneven

    workers.run(_sharded_eval, str(weights), str(tmp_path), batch)

    gathered = pd.read_parquet(tmp_path / "gathered.parquet")
    single = pd.read_parquet(tmp_path / "single.parquet")
    assert gathered["index"].tolist() == list(range(n))
    pd.testing.assert_frame_equal(gathered, single, check_exact=True)
    # the test is not vacuous: the model is accurate and the attack changes some predictions
    assert gathered["correct"].mean() > 0.8
    assert 0 < gathered["adv_correct"].sum() < gathered["correct"].sum()
    assert gathered["linf"].max() <= 0.1 + 1e-6
    t = torch.load(tmp_path / "tensors.pt", weights_only=True)
    assert torch.equal(t["index"], torch.arange(n))
    assert torch.equal(t["correct"], t["ref_correct"]) and t["correct"].dtype == torch.bool
    torch.testing.assert_close(t["logits"], t["ref_logits"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- minibatch CKA
def _hsic1_sums(feats: list[torch.Tensor]) -> torch.Tensor:
    """Unbiased HSIC (Song et al. 2012) of every pair of linear Grams of one minibatch, float64."""
    grams = torch.stack([(f.double() @ f.double().T) for f in feats])
    b = grams.shape[1]
    k = grams.clone()
    k.diagonal(dim1=1, dim2=2).zero_()
    flat = k.reshape(len(feats), -1)
    rows = k.sum(2)
    tot = rows.sum(1)
    return (flat @ flat.T + torch.outer(tot, tot) / ((b - 1) * (b - 2)) - 2.0 / (b - 2) * rows @ rows.T) / (b * (b - 3))


def _features(n: int) -> tuple[list[torch.Tensor], int]:
    from rtk.data.digits import load_digits
    from rtk.models.small import mlp

    data = load_digits()
    torch.manual_seed(1)
    net = mlp(data.info, hidden=(64, 32))
    x = data.train.x[:n]
    feats, h = [x.flatten(1)], x
    for layer in net:
        h = layer(h)
        if isinstance(layer, (nn.Linear, nn.ReLU)):
            feats.append(h.detach())
    return feats, n


def _accumulate(feats: list[torch.Tensor], batch_ids: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    total = torch.zeros(len(feats), len(feats), dtype=torch.float64)
    count = torch.zeros((), dtype=torch.float64)
    for b in batch_ids.tolist():
        total += _hsic1_sums([f[b * batch : (b + 1) * batch] for f in feats])
        count += 1
    return total, count


def _cka(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    mean = total / count
    d = mean.diagonal()
    return mean / torch.sqrt(torch.outer(d, d))


def _distributed_cka(rank: int, out: str, n: int, batch: int) -> None:
    feats, _ = _features(n)
    n_batches = -(-n // batch)
    mine = rd.shard_indices(n_batches, mode="strided")
    total, count = _accumulate(feats, mine, batch)
    local_count = float(count)
    total, count = rd.all_reduce_sum(total), rd.all_reduce_sum(count)
    assert total.dtype == torch.float64 and local_count < float(count) == n_batches
    # rtk.similarity's streaming accumulator: its sums through all_reduce_sum, and its own sync()
    from rtk.similarity import MinibatchCKA

    def stream(batch_ids: torch.Tensor) -> MinibatchCKA:
        acc = MinibatchCKA()
        for i in batch_ids.tolist():
            acc.update([f[i * batch : (i + 1) * batch] for f in feats])
        return acc

    acc = stream(mine)
    state = acc.state_dict()
    class_sum = rd.all_reduce_sum(state["sum"])
    class_count = rd.all_reduce_sum(torch.tensor(float(state["batches"]), dtype=torch.float64))
    acc.sync()
    if rank == 0:
        ref_total, ref_count = _accumulate(feats, torch.arange(n_batches), batch)
        torch.save(
            {
                "cka": _cka(total, count),
                "ref": _cka(ref_total, ref_count),
                "local": _cka(*_accumulate(feats, mine, batch)),
                "class": _cka(class_sum, class_count),
                "class_sync": acc.compute(),
                "class_ref": stream(torch.arange(n_batches)).compute(),
            },
            Path(out, "cka.pt"),
        )


def test_distributed_minibatch_cka_equals_single_process(tmp_path, workers):
    n, batch = 1000, 96  # 11 minibatches, the last one of 40: uneven over 2 ranks
    workers.run(_distributed_cka, str(tmp_path), n, batch)
    res = torch.load(tmp_path / "cka.pt", weights_only=True)
    cka, ref = res["cka"], res["ref"]
    assert cka.shape == (6, 6) and cka.dtype == torch.float64
    assert (cka - ref).abs().max() < 1e-6
    torch.testing.assert_close(cka.diagonal(), torch.ones(6, dtype=torch.float64))
    assert cka.min() < 0.9  # layers differ, so the check is not trivially all ones
    assert (res["local"] - ref).abs().max() > 1e-6  # one rank's share alone does not match
    # the same through rtk.similarity.MinibatchCKA (float32 Grams: agrees with ours to ~1e-9)
    assert (res["class"] - res["class_ref"]).abs().max() < 1e-6
    assert (res["class_sync"] - res["class_ref"]).abs().max() < 1e-6
    assert (res["class_ref"] - ref).abs().max() < 1e-5


# ---------------------------------------------------------------------------- DDP training
def _train(model: nn.Module, sampler: rd.DistributedBatchSampler, split, epochs: int, attack_steps: int) -> list[float]:
    """Plain SGD on rtk's PGD examples (deterministic start) made against the bare module."""
    reg = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))
    aspec = reg.get("attack", "pgd")
    opts = rtk.validate_options(aspec.options, {"eps": 0.05, "steps": attack_steps, "random_start": False}, "attack")
    attack = aspec.build(rd.unwrap(model), opts)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    losses = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y, weight in sampler.iterate(split):
            x_adv = attack(x, y)
            model.train()
            loss = nn.functional.cross_entropy(model(x_adv), y)
            opt.zero_grad(set_to_none=True)
            (loss * weight).backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses


def _ddp_train(rank: int, out: str, n: int, per_rank: int, epochs: int) -> None:
    from rtk.data.digits import load_digits
    from rtk.models.small import mlp

    data = load_digits()
    split = data.train.subset(torch.arange(n))
    torch.manual_seed(100 + rank)  # different replicas: DDP must broadcast rank 0's weights
    model = rd.wrap_model(mlp(data.info, hidden=(32,)), "cpu")
    assert isinstance(model, nn.parallel.DistributedDataParallel)
    init = {k: v.detach().clone() for k, v in rd.unwrap(model).state_dict().items()}
    sampler = rd.DistributedBatchSampler(n, per_rank, seed=5)
    _train(model, sampler, split, epochs, attack_steps=2)
    final = {k: v.detach().clone() for k, v in rd.unwrap(model).state_dict().items()}
    replicas = rd.all_gather_object(final)
    if rank == 0:
        torch.manual_seed(100)
        ref = mlp(data.info, hidden=(32,))
        assert all(torch.equal(v, init[k]) for k, v in ref.state_dict().items())
        single = rd.DistributedBatchSampler(n, per_rank * rd.world_size(), seed=5, rank_=0, world=1)
        _train(ref, single, split, epochs, attack_steps=2)
        torch.save(
            {
                "ddp": final,
                "rank1": replicas[1],
                "single": ref.state_dict(),
                "init": init,
                "steps": len(sampler) * epochs,
            },
            Path(out, "params.pt"),
        )


def test_ddp_training_follows_single_process(tmp_path, workers):
    n, per_rank, epochs = 203, 16, 2  # global batch 32; the last one splits 5 / 6 (weighted)
    workers.run(_ddp_train, str(tmp_path), n, per_rank, epochs)
    res = torch.load(tmp_path / "params.pt", weights_only=True)
    assert res["steps"] == 14
    for k, v in res["ddp"].items():
        assert torch.equal(v, res["rank1"][k]), f"replicas diverged at {k}"
        moved = (v - res["init"][k]).abs().max()
        diff = (v - res["single"][k]).abs().max()
        assert k.startswith("norm.") or moved > 1e-2, f"{k} barely trained ({moved:.2e})"  # norm.*: buffers
        assert diff < 1e-5, f"{k}: DDP and single-process parameters differ by {diff:.2e}"


# ---------------------------------------------------------------------------- launcher
def test_run_nproc_relaunches_through_torchrun(tmp_path, monkeypatch, capfd):
    from click.testing import CliRunner

    from rtk.cli.main import cli

    for k in rd.TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    exp = tmp_path / "exp.toml"
    exp.write_text(
        'name = "d"\n[dataset]\nname = "digits"\n[models.net]\narch = "mlp"\nhidden = [8]\n'
        '[[stages]]\nkind = "evaluate"\nmodels = ["net"]\n'
    )
    seen = {}

    def fake_launch(argv, nproc, **kw):
        seen["argv"], seen["nproc"] = list(argv), nproc
        return 0

    monkeypatch.setattr(rtk_launch, "launch", fake_launch)
    res = CliRunner().invoke(
        cli, ["-q", "run", str(exp), "--nproc", "2", "--dry-run", "--seed", "3"], catch_exceptions=False
    )
    assert res.exit_code == 0, res.output
    assert seen == {"argv": ["-q", "run", "--dry-run", "--seed", "3", str(exp)], "nproc": 2}
    res = CliRunner().invoke(cli, ["-q", "launch", "--nproc", "3", "evaluate", "--help"], catch_exceptions=False)
    assert res.exit_code == 0 and seen == {"argv": ["-q", "evaluate", "--help"], "nproc": 3}
    monkeypatch.setattr(rtk_launch, "launch", lambda argv, nproc, **kw: 3)  # a failing torchrun is an error exit
    res = CliRunner().invoke(cli, ["run", str(exp), "--nproc", "2"])
    assert res.exit_code != 0 and "torchrun exited with status 3" in res.output
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = CliRunner().invoke(cli, ["run", str(exp), "--nproc", "2"])
    assert res.exit_code != 0 and "already runs under torchrun" in res.output
    cmd = torchrun_command(["-q", "run", "--dry-run", "--seed", "3", str(exp)], 2)
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and cmd[-7:-6] == ["rtk.cli.main"]
    assert "--rdzv-endpoint" in torchrun_command([], 2, port=1234)
    monkeypatch.undo()
    for k in rd.TORCHRUN_ENV:
        monkeypatch.delenv(k, raising=False)
    # end to end: two real workers each validate the plan; only rank 0 prints
    status = launch(["run", str(exp), "--dry-run"], 2, env={"OMP_NUM_THREADS": "1"}, timeout=DEADLINE_S)
    assert status == 0
    assert capfd.readouterr().out.count("plan is valid") == 1

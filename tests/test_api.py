"""rtk.evaluate / train / prune / verify / compare on a plain nn.Module and every data form,
the kernels on feature tensors, and the errors of bad arguments."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rtk
from rtk.api import ApiError
from rtk.evaluation.adapters import ModelOutputError

PGD = {"name": "pgd", "steps": 3}


class Net(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        return self.fc(self.drop(self.relu(self.conv(x)).flatten(1)))


@pytest.fixture(scope="module")
def data(digits):
    return digits.train.x, digits.train.y, digits.test.x[:60], digits.test.y[:60]


@pytest.fixture(scope="module")
def net(data):
    """A model trained by a plain PyTorch loop (what a user already has)."""
    x, y, _, _ = data
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for i in range(0, len(x), 128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 128]), y[i : i + 128]).backward()
            opt.step()
    return model.eval()


def _clean(res) -> float:
    return float(res.worst_case["clean_accuracy"].iloc[0])


def test_done_means_one_liner():
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x = torch.rand(100, 1, 8, 8)
    y = torch.randint(0, 10, (100,))
    res = rtk.evaluate(m, (x, y), attacks=["pgd"], eps=0.1)
    assert isinstance(res.worst_case, pd.DataFrame)
    assert {"clean_accuracy", "accuracy", "eps", "n"} <= set(res.worst_case.columns)
    assert int(res.worst_case["n"].iloc[0]) == 100
    assert res.path is None and res.report is None


def test_every_data_form_gives_the_same_clean_accuracy(net, data, tmp_path):
    _, _, xt, yt = data
    kw = dict(attacks=[PGD], eps=0.1, checks=False)
    tensors = rtk.evaluate(net, (xt, yt), **kw)
    dataset = rtk.evaluate(net, TensorDataset(xt, yt), **kw)
    loader = rtk.evaluate(net, DataLoader(TensorDataset(xt, yt), batch_size=16), **kw)
    numpy = rtk.evaluate(net, (xt.numpy(), yt.numpy()), **kw)
    assert _clean(tensors) == _clean(dataset) == _clean(loader) == _clean(numpy) > 0.5
    assert any("DataLoader" in n for n in loader.notes)
    by_name = rtk.evaluate(net, "digits", limit=40, split="test", out=tmp_path / "run", **kw)
    table = rtk.evaluate(net, {"name": "digits", "limit_test": 40}, **kw)
    assert int(by_name.worst_case["n"].iloc[0]) == 40 == int(table.worst_case["n"].iloc[0])
    assert (tmp_path / "run" / "report.md").exists() and by_name.report == tmp_path / "run" / "report.md"
    assert "rtk.evaluate" in by_name.report.read_text()


def test_evaluate_runs_the_stage_engine_with_checks(net, data):
    _, _, xt, yt = data
    res = rtk.evaluate(net, (xt[:32], yt[:32]), attacks=[PGD], eps=[0.05, 0.1], limit=24)
    assert sorted(res.accuracy["eps"].dropna().unique()) == [0.05, 0.1]
    assert len(res.checks) and set(res.checks["status"]) <= {"pass", "fail", "skipped"}
    acc = res.worst_case.set_index("eps")["accuracy"]
    assert acc[0.1] <= acc[0.05] <= _clean(res)


def test_normalized_input_model(net, data):
    _, _, xt, yt = data
    mean, std = [0.3], [0.4]

    class Expects(nn.Module):  # takes (x - mean) / std, as many pretrained models do
        def __init__(self):
            super().__init__()
            self.inner = net

        def forward(self, z):
            return self.inner(z * std[0] + mean[0])

    plain = rtk.evaluate(net, (xt, yt), attacks=[PGD], eps=0.1, checks=False)
    adapted = rtk.evaluate(Expects(), (xt, yt), attacks=[PGD], eps=0.1, checks=False, normalize=(mean, std))
    assert _clean(adapted) == _clean(plain)
    assert float(adapted.worst_case["accuracy"].iloc[0]) == pytest.approx(float(plain.worst_case["accuracy"].iloc[0]))
    # the stages without these options get the model behind a traceable Normalize
    v_plain = rtk.verify(net, (xt, yt), certifiers=["ibp"], eps=[0.01], limit=30).verified
    v_norm = rtk.verify(Expects(), (xt, yt), certifiers=["ibp"], eps=[0.01], limit=30, normalize=(mean, std)).verified
    assert v_norm["verified_accuracy"].tolist() == pytest.approx(v_plain["verified_accuracy"].tolist())
    trained = rtk.train(Expects(), (xt, yt), trainer="standard", epochs=1, normalize=(mean, std), eval_every=0)
    assert isinstance(trained.model, Expects), "the result is the caller's kind of module, unwrapped"


def test_tuple_output_model_needs_output(net, data):
    _, _, xt, yt = data

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = net

        def forward(self, x):
            return self.inner(x), x.mean()

    with pytest.raises(ModelOutputError, match='output = "first"'):
        rtk.evaluate(Pair(), (xt, yt), attacks=[PGD], eps=0.1, checks=False)
    res = rtk.evaluate(Pair(), (xt, yt), attacks=[PGD], eps=0.1, checks=False, output="first")
    assert _clean(res) == _clean(rtk.evaluate(net, (xt, yt), attacks=[PGD], eps=0.1, checks=False))
    cmp = rtk.compare(Pair(), (xt, yt), limit=30, output="first", analyses=["heatmap"])
    assert "model.inner.conv" in set(cmp.heatmaps["layer_a"])


def test_train_mode_model_is_evaluated_in_eval_mode_and_said(net, data):
    _, _, xt, yt = data
    model = Net(dropout=0.9)
    model.load_state_dict(net.state_dict())
    model.train()
    res = rtk.evaluate(model, (xt, yt), attacks=[PGD], eps=0.1, checks=False)
    assert any("train mode" in n and "eval mode" in n for n in res.notes)
    assert model.training, "the caller's module is not changed"
    assert _clean(res) == _clean(rtk.evaluate(net, (xt, yt), attacks=[PGD], eps=0.1, checks=False))


def test_train_returns_a_trained_copy_and_history(data):
    x, y, xt, yt = data
    torch.manual_seed(0)
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = rtk.train(model, (x[:400], y[:400]), trainer="standard", epochs=2, lr=0.05, test_data=(xt, yt))
    assert len(res.history) == 2
    assert isinstance(res.model, Net)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "caller's module unchanged"
    assert any(not torch.equal(before[k], v) for k, v in res.model.state_dict().items())
    adv = rtk.train(model, (x[:200], y[:200]), trainer={"name": "pgd-at", "steps": 2}, eps=0.1, epochs=1, eval_every=0)
    assert isinstance(adv.model, Net)


def test_prune_verify_compare(net, data, tmp_path):
    x, y, xt, yt = data
    pr = rtk.prune(
        net,
        (x[:300], y[:300]),
        pruner="lwm",
        compression=2,
        trainer="standard",
        test_data=(xt, yt),
        score_epochs=0,
        finetune_epochs=1,
        keep_first=False,
        attacks=[{"name": "pgd", "eps": 0.1, "steps": 2}],
        eval_limit=40,
    )
    assert list(pr.models) == ["model-lwm-2x"]
    pruned = pr.models["model-lwm-2x"]
    zeros = float((pruned.conv.weight == 0).float().mean())
    assert zeros == pytest.approx(0.5, abs=0.05)
    assert set(pr.compression["method"]) == {"dense", "lwm"}

    ver = rtk.verify(net, (xt, yt), certifiers=["ibp", "crown"], eps=[0.0, 0.01], limit=30)
    v = ver.verified.set_index(["certifier", "eps"])["verified_accuracy"]
    assert v[("crown", 0.01)] >= v[("ibp", 0.01)] and v[("ibp", 0.0)] >= v[("ibp", 0.01)]

    one = rtk.compare(net, (xt, yt), limit=40, out=tmp_path / "cmp")
    assert "heatmaps" in one.tables and "block_structure" in one.tables
    two = rtk.compare(net, (xt, yt), model_b=pruned, inputs={"name": "pgd", "eps": 0.1, "steps": 2}, limit=40)
    diag = two.diagonal
    assert list(diag["layer"]) == ["conv", "relu", "fc"] and diag["value"].between(0, 1.0001).all()


def test_kernels_on_feature_tensors():
    from rtk.similarity import kernels

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(60, 5, generator=g), torch.randn(60, 7, generator=g)
    assert rtk.cka(a, a) == pytest.approx(1.0)
    assert rtk.cka(a, b) == pytest.approx(kernels.linear_cka(a, b))
    assert rtk.cka(a, b, debiased=True) == pytest.approx(kernels.linear_cka(a, b, debiased=True))
    assert rtk.cka(a, b, kernel="rbf") == pytest.approx(kernels.rbf_cka(a, b))
    assert rtk.svcca(a, b) == pytest.approx(kernels.svcca(a, b))
    assert rtk.pwcca(a, b) == pytest.approx(kernels.pwcca(a, b))
    assert rtk.procrustes(a, b) == pytest.approx(kernels.procrustes_distance(a, b))
    assert rtk.cka(a.view(60, 5, 1), b.numpy()) == pytest.approx(kernels.linear_cka(a, b))
    with pytest.raises(ApiError, match="allowed: linear, rbf"):
        rtk.cka(a, b, kernel="poly")


def test_component_records_need_no_plugin(net, data):
    _, _, xt, yt = data

    def build(model, opts):
        return lambda x, y: x  # no perturbation: robust accuracy == clean accuracy

    mine = rtk.AttackSpec(name="my-identity", summary="nothing", build=build, norm="none")
    res = rtk.evaluate(net, (xt, yt), attacks=[mine], eps=None, checks=False)
    assert float(res.accuracy["accuracy"].iloc[0]) == _clean(res)


def test_bad_arguments_are_clear_rtk_errors(net, data):
    _, _, xt, yt = data
    with pytest.raises(ApiError, match="unknown attack 'pgdd'.*did you mean 'pgd'") as err:
        rtk.evaluate(net, (xt, yt), attacks=["pgdd"])
    assert isinstance(err.value, rtk.RtkError) and "stages[0]" not in str(err.value)
    with pytest.raises(rtk.RtkError, match=r"must lie in \[0, 1\].*normalize=\(mean, std\)"):
        rtk.evaluate(net, (xt * 2, yt))
    with pytest.raises(ApiError, match="allowed: an \\(x, y\\) pair"):
        rtk.evaluate(net, 42)
    with pytest.raises(ApiError, match="expected a torch.nn.Module"):
        rtk.evaluate("net", (xt, yt))
    with pytest.raises(ApiError, match="unknown dataset 'digit'"):
        rtk.evaluate(net, "digit")
    with pytest.raises(ApiError, match="epochz: unknown key.*did you mean 'epochs'"):
        rtk.train(net, (xt, yt), trainer="standard", epochz=1)
    with pytest.raises(ApiError, match="norm: 'Linf2' is not allowed"):
        rtk.evaluate(net, (xt, yt), norm="Linf2")
    with pytest.raises(ApiError, match="failed on an input of shape"):
        rtk.evaluate(nn.Linear(3, 2), (xt, yt))

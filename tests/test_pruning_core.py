"""Pruning machinery: exact sparsity, masks through training, HYDRA scores, structured
pruning of plain and residual models, pickle-free save/load, dense export, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rtk
from rtk.models import ModelRecipe, load_checkpoint, save_checkpoint
from rtk.pruning import (
    IMPORTANCES,
    ChannelPruner,
    HydraPruner,
    LayerSelection,
    MagnitudePruner,
    PruneJob,
    PruningError,
    RandomPruner,
    ScoreTraining,
    count_macs_and_params,
    dense_export,
    exported_recipe,
    is_masked,
    keep_count,
    masks_of,
    pruned_recipe,
    remaining_params,
    select_layers,
)
from rtk.training import StandardObjective


def _build(registry, digits, arch: str, **options):
    spec = registry.get("model", arch)
    opts = rtk.validate_options(spec.options, options, arch)
    torch.manual_seed(0)
    return spec.build(digits.info, opts), ModelRecipe(arch, opts.model_dump(), digits.info)


def _x(digits, n: int = 16) -> torch.Tensor:
    return digits.train.x[:n]


def _with_lwm(registry, digits, ratio: float):
    """cnn-small on digits, its example inputs, its prunable layers, and a copy LWM pruned at ``ratio``."""
    model, _ = _build(registry, digits, "cnn-small")
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    lwm = copy.deepcopy(model)
    MagnitudePruner().prune(lwm, ratio, PruneJob(layers=sel.names, example_inputs=x))
    return model, x, sel, lwm


def _hydra_job(digits, x: torch.Tensor, sel, objective) -> PruneJob:
    """HYDRA's job on the selected layers: two epochs of score training under ``objective`` on 256 digits."""
    data = rtk.data.DatasetBundle(
        digits.info, rtk.data.subset(digits.train, 256, 0), rtk.data.subset(digits.test, 64, 0)
    )
    scores = ScoreTraining(epochs=2, batch_size=64, lr=0.5)
    return PruneJob(layers=sel.names, example_inputs=x, data=data, objective=objective, scores=scores)


class TinyResidual(nn.Module):
    """conv -> (conv-bn-relu-conv-bn) + identity -> relu -> pool -> linear: one residual add."""

    def __init__(self, c: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.a = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(2 * c)
        self.b = nn.Conv2d(2 * c, c, 3, padding=1)
        self.bn_b = nn.BatchNorm2d(c)
        self.mid = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.head = nn.Linear(2 * c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        h = F.relu(h + self.bn_b(self.b(F.relu(self.bn_a(self.a(h))))))
        h = F.relu(self.mid(h))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


class RawConv(nn.Module):
    """A convolution written with a raw parameter and F.conv2d: torch-pruning cannot follow it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c, c, 3, 3) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1)


class Unprunable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.raw = RawConv(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.raw(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


# ----------------------------------------------------------------------------- unstructured sparsity
@pytest.mark.parametrize("pruner", [MagnitudePruner("layer"), RandomPruner("layer")], ids=["lwm", "random"])
@pytest.mark.parametrize("ratio", [0.5, 0.9, 0.99])
def test_layerwise_sparsity_equals_ratio_in_every_layer(registry, digits, pruner, ratio):
    model, _ = _build(registry, digits, "cnn-large")
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    assert sel.first == "conv1" and sel.last == "head" and "conv1" not in sel.names and "head" not in sel.names
    pruner.prune(model, ratio, PruneJob(layers=sel.names, example_inputs=x))
    mods = dict(model.named_modules())
    for name in sel.names:
        mask = mods[name].weight_mask
        n = mask.numel()
        assert int(mask.sum()) == keep_count(n, ratio), name
        assert abs((1 - mask.float().mean().item()) - ratio) <= 1 / n, name
        assert torch.all(mods[name].weight[~mask] == 0), f"{name}: pruned weights must be zero"
    assert not is_masked(mods["conv1"]) and not is_masked(mods["head"])


@pytest.mark.parametrize("pruner", [MagnitudePruner("global"), RandomPruner("global")], ids=["lwm", "random"])
def test_global_sparsity_equals_ratio_overall(registry, digits, pruner):
    model, _ = _build(registry, digits, "cnn-large")
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    pruner.prune(model, 0.8, PruneJob(layers=sel.names, example_inputs=x))
    masks = masks_of(model)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == keep_count(total, 0.8)
    per_layer = [1 - m.float().mean().item() for m in masks.values()]
    if isinstance(pruner, MagnitudePruner):  # magnitudes differ between layers: global != uniform
        assert max(per_layer) - min(per_layer) > 0.01


def test_global_lwm_keeps_the_largest_weights_across_layers(registry, digits):
    model, _ = _build(registry, digits, "cnn-small")
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    mods = dict(model.named_modules())
    before = torch.cat([mods[n].weight.detach().abs().flatten() for n in sel.names])
    MagnitudePruner("global").prune(model, 0.7, PruneJob(layers=sel.names, example_inputs=x))
    kept = torch.cat([mods[n].weight.detach().abs()[mods[n].weight_mask] for n in sel.names])
    pruned = before.sort().values[: len(before) - len(kept)]
    assert kept.min() >= pruned.max()


def test_masks_hold_through_training_and_masked_forward_is_exact(registry, digits):
    model, _ = _build(registry, digits, "cnn-small")
    x = _x(digits, 64)
    y = digits.train.y[:64]
    sel = select_layers(model, LayerSelection(), x)
    MagnitudePruner().prune(model, 0.9, PruneJob(layers=sel.names, example_inputs=x))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for m in masks_of(model).values():
            assert m.dtype == torch.bool
        for name in sel.names:
            mod = dict(model.named_modules())[name]
            assert torch.all(mod.weight.grad[~mod.weight_mask] == 0)
        opt.step()
    with torch.no_grad():
        out = model(x)
    exported = dense_export(copy.deepcopy(model))
    assert not any(is_masked(m) for m in exported.modules())
    assert type(exported.conv2) is nn.Conv2d
    assert torch.equal(exported(x), out)
    for name in sel.names:
        mod = dict(model.named_modules())[name]
        assert torch.all(mod.weight[~mod.weight_mask] == 0), "pruned weights regrew"


# ----------------------------------------------------------------------------- HYDRA
def test_hydra_starts_from_lwm_trains_scores_only_and_keeps_k_per_layer(registry, digits):
    model, x, sel, lwm = _with_lwm(registry, digits, 0.9)
    weights = {n: dict(model.named_modules())[n].weight.detach().clone() for n in sel.names}
    job = _hydra_job(digits, x, sel, StandardObjective())
    out = HydraPruner().prune(model, 0.9, job)
    mods, lmods = dict(model.named_modules()), dict(lwm.named_modules())
    for n in sel.names:
        m = mods[n]
        assert is_masked(m) and not hasattr(m, "scores")
        assert int(m.weight_mask.sum()) == keep_count(m.weight.numel(), 0.9)
        assert torch.equal(m.weight.detach(), weights[n] * m.weight_mask), "weights must stay frozen"
    changed = sum(int((mods[n].weight_mask != lmods[n].weight_mask).sum()) for n in sel.names)
    assert changed > 0, "score training did not move the mask away from the LWM start"
    assert 0 < out.info["overlap_with_lwm"] < 1


def test_hydra_and_fine_tuning_under_a_certified_objective(registry, digits):
    """The verifiable pipeline: scores and fine-tuning driven by the IBP bound loss; the
    bound propagation sees the masked weights, so masks hold and scores move."""
    model, x, sel, lwm = _with_lwm(registry, digits, 0.8)
    spec = registry.get("trainer", "ibp")
    objective = spec.build(rtk.validate_options(spec.options, {"eps": 0.05, "warmup": 0.0, "ramp": 0.5}, "ibp"))
    job = _hydra_job(digits, x, sel, objective)
    HydraPruner().prune(model, 0.8, job)
    moved = sum(int((m != masks_of(lwm)[n]).sum()) for n, m in masks_of(model).items())
    assert moved > 0, "the bound loss gave the scores no gradient"
    from rtk.pruning.base import make_loop_config
    from rtk.training import fit

    fit(
        model,
        objective,
        job.data,
        make_loop_config(epochs=1, batch_size=64, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4),
        plot=False,
    )
    for n, mask in masks_of(model).items():
        assert torch.all(dict(model.named_modules())[n].weight[~mask] == 0), f"{n}: IBP fine-tuning regrew weights"


def test_hydra_without_scores_training_is_lwm(registry, digits):
    model, x, sel, lwm = _with_lwm(registry, digits, 0.8)
    job = PruneJob(
        layers=sel.names, example_inputs=x, data=digits, objective=StandardObjective(), scores=ScoreTraining(epochs=0)
    )
    HydraPruner().prune(model, 0.8, job)
    for n, m in masks_of(model).items():
        assert torch.equal(m, masks_of(lwm)[n])


def test_scored_layer_gives_scores_a_straight_through_gradient(digits):
    from rtk.pruning import scaled_score_init, to_scored

    layer = nn.Linear(64, 10)
    w = layer.weight.detach().clone()
    to_scored(layer, 100, scaled_score_init(w))
    layer.weight.requires_grad_(False)
    x = digits.train.x[:8].flatten(1)
    layer(x).sum().backward()
    mask = layer.current_mask()
    expected = (torch.ones(8, 10).t() @ x) * w * torch.sign(layer.scores.detach())
    assert int(mask.sum()) == 100
    assert torch.allclose(layer.scores.grad, expected, atol=1e-5)
    assert layer.weight.grad is None


# ----------------------------------------------------------------------------- structured
@pytest.mark.parametrize(
    "arch,options",
    [("cnn-small", {}), ("resnet-small", {"blocks": 1, "width": 8}), ("tiny", {})],
    ids=["cnn-small", "resnet-small", "tiny-residual"],
)
def test_structured_pruning_shrinks_params_and_macs_and_runs(registry, digits, arch, options):
    if arch == "tiny":
        torch.manual_seed(0)
        model = TinyResidual()
    else:
        model, _ = _build(registry, digits, arch, **options)
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    pruner = ChannelPruner(importance="l2")
    pruner.validate(model, sel.names, x)
    macs0, params0 = count_macs_and_params(model, x[:1])
    out = pruner.prune(model, 0.5, PruneJob(layers=sel.names, example_inputs=x))
    pruned = out.model
    macs1, params1 = count_macs_and_params(pruned, x[:1])
    assert params1 < params0 and macs1 < macs0
    assert remaining_params(pruned) == sum(p.numel() for p in pruned.parameters()) == params1
    pruned.train()
    logits = pruned(x)
    assert logits.shape == (len(x), 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in pruned.parameters())
    if arch != "tiny":  # plenty of channels to reach the target exactly
        assert abs(out.info["removed_fraction"] - 0.5) < 0.03
    assert model(x).shape == (len(x), 10), "the dense model must be left intact"


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_every_channel_importance_prunes_a_residual_model(digits, importance):
    torch.manual_seed(0)
    model = TinyResidual()
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    data = rtk.data.DatasetBundle(digits.info, rtk.data.subset(digits.train, 64, 0), digits.test)
    job = PruneJob(layers=sel.names, example_inputs=x, data=data, objective=StandardObjective())
    out = ChannelPruner(importance=importance, batches=1, batch_size=32, eps=0.1, steps=2).prune(model, 0.4, job)
    assert remaining_params(out.model) < remaining_params(model)
    assert out.model(x).shape == (len(x), 10)
    assert all(p.grad is None for p in model.parameters()), "gradients used for importance must be cleared"


def test_robust_taylor_ranks_channels_differently_from_clean_taylor(registry, digits):
    from rtk.pruning.structured import accumulate_gradients

    model, _ = _build(registry, digits, "cnn-small")
    x = _x(digits)
    job = PruneJob(layers=["conv2", "fc1"], example_inputs=x, data=digits)
    grads = {}
    for loss in ("clean", "pgd"):
        accumulate_gradients(model, job, loss=loss, batches_=1, batch_size=64, eps=0.2, alpha=None, steps=3)
        grads[loss] = model.conv2.weight.grad.clone()
        model.zero_grad(set_to_none=True)
    assert not torch.allclose(grads["clean"], grads["pgd"])


# ----------------------------------------------------------------------------- saving
def _roundtrip(tmp_path, registry, model, recipe, x):
    path = save_checkpoint(tmp_path / "pruned", model, recipe)
    loaded, rec2, spec = load_checkpoint(path, registry)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    return loaded, spec


def test_masked_model_round_trips_without_pickle(tmp_path, registry, digits):
    model, recipe = _build(registry, digits, "cnn-small")
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    MagnitudePruner().prune(model, 0.9, PruneJob(layers=sel.names, example_inputs=x))
    loaded, spec = _roundtrip(tmp_path, registry, model, pruned_recipe(recipe, model, method="lwm", ratio=0.9), x)
    [entry] = spec["extra"]["transforms"]
    assert entry["kind"] == "pruning.masks" and entry["layers"] == sorted(sel.names)
    assert entry["method"] == "lwm" and abs(entry["sparsity"] - 0.9) < 1e-3
    assert type(loaded.conv2).__name__ == "MaskedConv2d"
    for n, m in masks_of(model).items():
        assert torch.equal(masks_of(loaded)[n], m)
    assert spec["shapes"]["conv2.weight_mask"] == list(model.conv2.weight.shape)
    assert (tmp_path / "pruned.safetensors").read_bytes()[:8] != b"\x80\x04\x95"  # not a pickle


def test_structured_model_round_trips_from_recorded_shapes(tmp_path, registry, digits):
    model, recipe = _build(registry, digits, "resnet-small", blocks=1, width=8)
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    pruned = ChannelPruner(importance="lamp").prune(model, 0.6, PruneJob(layers=sel.names, example_inputs=x)).model
    loaded, spec = _roundtrip(tmp_path, registry, pruned, pruned_recipe(recipe, pruned, dense=model), x)
    [entry] = spec["extra"]["transforms"]
    assert entry["kind"] == "pruning.shapes" and entry["modules"]
    for name, p in pruned.state_dict().items():
        assert loaded.state_dict()[name].shape == p.shape, name


def test_dense_export_round_trips_as_plain_modules(tmp_path, registry, digits):
    model, recipe = _build(registry, digits, "cnn-small")
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    MagnitudePruner().prune(model, 0.5, PruneJob(layers=sel.names, example_inputs=x))
    masked_recipe = pruned_recipe(recipe, model)
    with torch.no_grad():
        expected = model(x)
    dense_export(model)
    loaded, spec = _roundtrip(tmp_path, registry, model, exported_recipe(masked_recipe), x)
    assert "transforms" not in spec["extra"]
    assert all(type(m) in (nn.Conv2d, nn.Linear) for n, m in loaded.named_modules() if n in ("conv2", "fc1"))
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    plain = registry.get("model", "cnn-small").build(digits.info, registry.get("model", "cnn-small").options())
    plain.load_state_dict(loaded.state_dict())  # loads into the unpruned architecture as is


def test_cli_export_and_info(tmp_path, registry, digits):
    from click.testing import CliRunner

    from rtk.cli.main import cli

    model, recipe = _build(registry, digits, "cnn-small")
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    MagnitudePruner().prune(model, 0.75, PruneJob(layers=sel.names, example_inputs=x))
    save_checkpoint(tmp_path / "masked", model, pruned_recipe(recipe, model, method="lwm"))
    res = CliRunner().invoke(cli, ["prune", "info", str(tmp_path / "masked")])
    assert res.exit_code == 0, res.output
    assert "MaskedConv2d" in res.output and "pruning.masks" in res.output and "0.75" in res.output
    res = CliRunner().invoke(cli, ["prune", "export", str(tmp_path / "masked"), str(tmp_path / "dense")])
    assert res.exit_code == 0, res.output
    loaded, _, _ = load_checkpoint(tmp_path / "dense", registry)
    assert type(loaded.conv2) is nn.Conv2d
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ----------------------------------------------------------------------------- bad input
def test_ratio_outside_unit_interval_and_compression_below_one_are_rejected(registry):
    for bad, needle in (
        ({"ratios": [1.5]}, "ratio 1.5 is outside (0, 1)"),
        ({"ratios": [0.0]}, "ratio 0"),
        ({"compression": [0.5]}, "compression 0.5 is below"),
        ({"compression": [10], "ratios": [0.9]}, "either compression or ratios"),
    ):
        exp = {
            "dataset": "digits",
            "models": {"m": {"arch": "cnn-small"}},
            "stages": [{"kind": "prune", "model": "m", **bad}],
        }
        with pytest.raises(rtk.ConfigError) as err:
            rtk.plan(rtk.experiment_from_dict(exp), registry)
        assert needle in str(err.value) and "stages[0]" in str(err.value)


def test_layer_pattern_matching_nothing_fails_before_any_training(registry, digits):
    from rtk.pruning import Evaluator, Method, Schedule, Target, compress

    class NoWork:
        def __call__(self, *a, **k):
            raise AssertionError("training started before the layer patterns were checked")

    model, _ = _build(registry, digits, "cnn-small")
    with pytest.raises(rtk.ConfigError) as err:
        compress(
            model,
            [Method("lwm", MagnitudePruner())],
            [Target.from_compression(10)],
            data=digits,
            objective=NoWork(),
            selection=LayerSelection(("conv2", "features.*"), where="stages[1]"),
            schedule=Schedule(pretrain_epochs=5),
            evaluate=Evaluator(digits.test),
        )
    msg = str(err.value)
    assert "stages[1].layers[1]" in msg and "'features.*' matches no prunable layer" in msg and "fc1" in msg


def test_model_the_dependency_graph_cannot_handle_names_the_layer(digits):
    torch.manual_seed(0)
    model = Unprunable()
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    with pytest.raises(PruningError) as err:
        ChannelPruner().validate(model, sel.names, x)
    msg = str(err.value)
    assert "'raw'" in msg and "RawConv" in msg and "raw.weight" in msg
    MagnitudePruner().validate(model, sel.names, x)  # unstructured pruning is fine


def test_structured_pruning_refuses_masked_models(registry, digits):
    model, _ = _build(registry, digits, "cnn-small")
    x = _x(digits)
    sel = select_layers(model, LayerSelection(), x)
    MagnitudePruner().prune(model, 0.5, PruneJob(layers=sel.names, example_inputs=x))
    with pytest.raises(PruningError, match="dense_export"):
        ChannelPruner().validate(model, sel.names, x)


def test_two_prune_stages_making_the_same_model_name_is_a_plan_error(registry):
    import rtk as _rtk

    data = {
        "name": "dup",
        "dataset": {"name": "digits"},
        "models": {"m": {"arch": "mlp"}},
        "stages": [
            {"kind": "prune", "model": "m", "pruners": ["lwm"], "compression": [10]},
            {"kind": "prune", "model": "m", "pruners": ["lwm"], "compression": [10]},
        ],
    }
    with pytest.raises(_rtk.ConfigError, match=r"stages\[1\]: the pruned model 'm-lwm-10x' would replace"):
        _rtk.plan(_rtk.experiment_from_dict(data, registry=registry), registry)


def test_compression_labels_are_valid_model_names():
    """Issue 15 item 9: compression = [1e9] got an 'invalid name' error for its label (1e+09x)
    instead of the 'keeps fewer than one weight' error; labels never carry an exponent sign."""
    from rtk.pruning import compression_label
    from rtk.trust import name_problem

    assert [compression_label(c) for c in (10, 2.5, 1e9, 1e30)] == ["10x", "2.5x", "1000000000x", "1e30x"]
    for c in (2, 2.5, 1e9, 1e30, 1e-3):
        assert name_problem(f"net-{compression_label(c)}") is None


def test_layer_patterns_take_regular_expressions_and_name_a_bad_one(registry, digits):
    """Pruning's ``layers``/``exclude`` speak rtk's one pattern language (``rtk.NamePattern``): globs,
    or ``re:`` and a regular expression over the whole name; a broken expression names its key."""
    model, _ = _build(registry, digits, "cnn-small")
    x = _x(digits)
    names = select_layers(model, LayerSelection(("*",), keep_first=False, keep_last=False), x).names
    by_regex = select_layers(
        model, LayerSelection((r"re:conv[0-9]+",), ("re:conv1",), keep_first=False, keep_last=False), x
    ).names
    assert list(by_regex) == [n for n in names if n.startswith("conv") and n != "conv1"] and by_regex
    with pytest.raises(rtk.ConfigError) as err:
        select_layers(
            model,
            LayerSelection(
                (
                    "conv2",
                    "re:conv[",
                ),
                where="stages[1]",
            ),
            x,
        )
    assert "stages[1].layers[1]: invalid regular expression 're:conv['" in str(err.value)


def test_name_pattern_is_a_glob_or_an_anchored_regular_expression():
    assert rtk.NamePattern.parse("layer1.*").matches("layer1.0.conv1")
    assert not rtk.NamePattern.parse("layer1.*").matches("xlayer1.0")
    assert rtk.NamePattern.parse(r"re:layer[0-9]+\.conv1").matches("layer2.conv1")
    assert not rtk.NamePattern.parse(r"re:layer[0-9]+\.conv1").matches("layer2.conv10")  # the whole name
    with pytest.raises(rtk.ConfigError, match=r"params: invalid regular expression 're:\('"):
        rtk.NamePattern.parse("re:(", "params")

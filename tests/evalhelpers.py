"""Helpers shared by the evaluation tests: a registry lookup and a small trained model."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import rtk

sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
from benchcommon import fit_minibatches  # noqa: E402  (benchmarks/benchcommon.py, also the benchmarks')

REGISTRY = rtk.Registry.from_plugin_manager(rtk.plugin_manager(entry_points=False))


def attack(name: str, **opts):
    """``(spec, validated options, name)`` of a registered attack."""
    spec = REGISTRY.get("attack", name)
    return spec, rtk.validate_options(spec.options, opts, name), name


def fit_full_batch(model: nn.Module, digits, steps: int, n_test: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """``model`` trained on all of digits' training split at once (Adam, lr 1e-2) for ``steps`` steps,
    in eval mode, and the first ``n_test`` test examples."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = digits.train.x, digits.train.y
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, digits.test.x[:n_test].clone(), digits.test.y[:n_test].clone()


def train_digits_cnn(digits, epochs: int = 6) -> nn.Module:
    """cnn-small on digits with Adam, a few seconds; ~96% test accuracy."""
    from rtk.models.small import cnn_small

    torch.manual_seed(0)
    model = cnn_small(digits.info)
    return fit_minibatches(model, digits, epochs)


def cached_digits_cnn(digits, tmp_path_factory) -> nn.Module:
    """The trained cnn, trained once per test session (shared by the evaluation test files
    through the session's temporary directory)."""
    from safetensors.torch import load_file, save_file

    path = tmp_path_factory.getbasetemp() / "rtk-evaluation-digits-cnn.safetensors"
    if path.exists():
        model = train_digits_cnn(digits, epochs=0)
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    model = train_digits_cnn(digits)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model

"""Benchmark of rtk's pruning machinery; prints two ratios measured side by side.

1. masked forward / dense forward: the same network (cnn-large on Fashion-MNIST, batch 128)
   with 90% of its weights masked (LWM) against the dense one, in inference
   (``torch.no_grad``) and with gradients (as inside an attack or a training step);
2. HYDRA score training / robust training: one epoch of HYDRA score training under PGD-AT
   against one epoch of PGD-AT of the dense network, same data, same loop.

Runs are interleaved (dense, masked, dense, masked, ...) and medians are taken, so machine
load affects both sides alike. Targets: masked forward <= 1.10x, score training <= 1.15x.

    python benchmarks/bench_pruning.py [--repeats 30] [--epochs 3] [--train 1024]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def _data(n_train: int):
    from rtk.data import DatasetBundle, subset
    from rtk.data.idx import load_fashion_mnist

    full = load_fashion_mnist()
    return DatasetBundle(full.info, subset(full.train, n_train, 0), subset(full.test, 64, 1))


def bench_forward(model_dense, model_masked, x, repeats: int) -> dict[str, float]:
    out = {}
    for mode in ("inference", "with-grad"):
        times = {"dense": [], "masked": []}
        for r in range(repeats + 3):
            for name, m in (("dense", model_dense), ("masked", model_masked)):
                t0 = time.perf_counter()
                if mode == "inference":
                    with torch.no_grad():
                        m(x)
                else:
                    xi = x.clone().requires_grad_(True)
                    loss = m(xi).sum()
                    torch.autograd.grad(loss, xi)
                dt = time.perf_counter() - t0
                if r >= 3:
                    times[name].append(dt)
        out[mode] = statistics.median(times["masked"]) / statistics.median(times["dense"])
        out[f"{mode}-dense-ms"] = 1000 * statistics.median(times["dense"])
    return out


def bench_scores(model, data, epochs: int) -> dict[str, float]:
    from rtk.pruning import LayerSelection, keep_count, scaled_score_init, select_layers, to_scored
    from rtk.pruning.base import ScoreTraining, fit_parameters_kwargs, make_loop_config
    from rtk.training import PGDATObjective, fit

    objective = PGDATObjective(eps=0.1, steps=5)
    x = data.train.x[:8]
    layers = select_layers(model, LayerSelection(), x).names
    dense = copy.deepcopy(model)
    scored = copy.deepcopy(model)
    mods = dict(scored.named_modules())
    trainable = []
    for n in layers:
        m = mods[n]
        to_scored(m, keep_count(m.weight.numel(), 0.9), scaled_score_init(m.weight.detach()))
        trainable.append(m.scores)
    for p in scored.parameters():
        p.requires_grad_(any(p is q for q in trainable))
    cfg_dense = make_loop_config(epochs=1, batch_size=128, lr=0.01, optimizer="sgd", momentum=0.9, weight_decay=5e-4)
    cfg_score = ScoreTraining(epochs=1, batch_size=128).loop()
    times = {"dense": [], "scores": []}
    for _ in range(epochs):
        t0 = time.perf_counter()
        fit(dense, objective, data, cfg_dense, plot=False)
        times["dense"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fit(scored, objective, data, cfg_score, plot=False, **fit_parameters_kwargs(trainable))
        times["scores"].append(time.perf_counter() - t0)
    return {
        "ratio": statistics.median(times["scores"]) / statistics.median(times["dense"]),
        "dense-epoch-s": statistics.median(times["dense"]),
        "score-epoch-s": statistics.median(times["scores"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from rtk.models.small import cnn_large
    from rtk.pruning import LayerSelection, MagnitudePruner, PruneJob, select_layers

    data = _data(args.train)
    model = cnn_large(data.info).eval()
    x = data.train.x[:128]
    layers = select_layers(model, LayerSelection(), x[:8]).names
    masked = copy.deepcopy(model)
    MagnitudePruner("layer").prune(masked, 0.9, PruneJob(layers=layers, example_inputs=x[:8]))
    fwd = bench_forward(model, masked.eval(), x, args.repeats)
    print(f"model cnn-large on fashion-mnist, batch 128, 90% of {len(layers)} layers masked")
    print(
        f"masked forward / dense forward (inference, no_grad): {fwd['inference']:.3f}  "
        f"(dense {fwd['inference-dense-ms']:.2f} ms)  target <= 1.10"
    )
    print(
        f"masked forward+input-grad / dense (as in an attack):   {fwd['with-grad']:.3f}  "
        f"(dense {fwd['with-grad-dense-ms']:.2f} ms)"
    )
    sc = bench_scores(cnn_large(data.info), data, args.epochs)
    print(
        f"HYDRA score-training epoch / PGD-AT epoch ({args.train} examples, pgd-at eps 0.1, 5 steps): "
        f"{sc['ratio']:.3f}  (dense {sc['dense-epoch-s']:.2f} s, scores {sc['score-epoch-s']:.2f} s)  target <= 1.15"
    )


if __name__ == "__main__":
    main()

"""Speed of rtk's similarity kernels against the FLOP bound, a per-pair baseline and peers.

Run: ``python benchmarks/bench_similarity.py [--quick] [--install-peers] [--repeats N]``

Everything is measured side by side in one run (the sides interleaved in rotating order
after a warm-up round, medians of ``--repeats``), because the machine is shared and timings drift. Printed ratios:

- against the FLOP bound: the minimal flop count divided by the fp32 GEMM peak measured
  in this run (torch, 4096^3; NumPy's is printed beside it). Two counts are shown:
  ``issue`` is the count of the issue (a pair: ``2 n d1 d2``, the cross product only; a
  heatmap: L general Grams plus L^2 Frobenius products), ``exact`` is the least any exact
  method computes (a pair also needs ``||X^T X||`` and ``||Y^T Y||``: ``n (d1^2 + d2^2)`` with
  symmetry; a heatmap's Grams and products are symmetric: ``n^2 sum(d) + L(L+1)/2 n^2``);
- against per-pair computation (rtk's own single-pair kernel called for every pair, and
  a textbook per-pair Gram implementation);
- against the peers (torch_cka, ckatorch, cka-pytorch, pytorch-cka) when importable;
  ``--install-peers`` pip-installs them into a separate ``--peers-dir`` (never into the
  project). Each peer's value is also checked against a float64 reference.

On CUDA the heatmap also runs on the GPU and reports TFLOP/s.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch

from rtk.similarity import kernels as K
from rtk.similarity.streaming import MinibatchCKA

PEERS = ["torch_cka", "ckatorch", "cka-pytorch", "pytorch-cka"]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], object], dev: torch.device = torch.device("cpu")) -> tuple[float, object]:
    sync(dev)
    t = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t, out


def interleave(
    fns: dict[str, Callable[[], object]], repeats: int, dev: torch.device = torch.device("cpu"), cap: float = 90.0
) -> tuple[dict[str, float], dict[str, object]]:
    """Median time of each function, the functions run in turn each round.

    The first round is a warm-up (first-touch page faults, BLAS buffers) and is dropped for
    every function that ran more than once; the order rotates every round, so no function
    always runs right after the one that freed the most memory. A function whose first run
    exceeds ``cap`` seconds is not repeated (its single run is reported)."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in fns}
    values: dict[str, object] = {}
    for r in range(repeats + 1):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if r > 0 and times[name] and times[name][0] > cap:
                continue
            gc.collect()
            dt, out = timed(fns[name], dev)
            times[name].append(dt)
            values[name] = out
    return {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in times.items()}, values


def gemm_peak(dev: torch.device, size: int = 4096) -> tuple[float, float | None]:
    a = torch.randn(size, size, device=dev)
    b = torch.randn(size, size, device=dev)
    a @ b
    ts = [timed(lambda: a @ b, dev)[0] for _ in range(3)]
    peak_t = 2 * size**3 / statistics.median(ts)
    peak_n = None
    if dev.type == "cpu":
        an, bn = a.numpy(), b.numpy()
        an @ bn
        tn = []
        for _ in range(3):
            t = time.perf_counter()
            an @ bn
            tn.append(time.perf_counter() - t)
        peak_n = 2 * size**3 / statistics.median(tn)
    return peak_t, peak_n


# ----------------------------------------------------------------------------- baselines
def textbook_pair_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """A per-pair implementation as commonly written: two full Gram GEMMs, centring, and
    Frobenius products (no symmetry, nothing shared between pairs)."""
    k, l = x @ x.T, y @ y.T

    def c(g):
        return g - g.mean(0, keepdim=True) - g.mean(1, keepdim=True) + g.mean()

    kc, lc = c(k), c(l)
    return float((kc * lc).sum() / torch.sqrt((kc * kc).sum() * (lc * lc).sum()))


def numpy_feature_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Feature-space linear CKA in NumPy (Kornblith et al.'s formula), the best peer of the issue."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    xy = np.linalg.norm(x.T @ y) ** 2
    return float(xy / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def reference64(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    return K.linear_cka(x.double(), y.double(), debiased=debiased)


def load_peers(peers_dir: str | None, install: bool) -> dict[str, object]:
    if install and peers_dir:
        # --no-deps: torch and numpy are already here; ckatorch also imports seaborn
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", peers_dir, *PEERS, "seaborn"]
        print(f"installing peers into {peers_dir} (not the project): {' '.join(PEERS)}")
        subprocess.run(cmd, check=False)
    if peers_dir:
        sys.path.insert(0, peers_dir)
    found: dict[str, object] = {}
    for mod, label in (("ckatorch.core", "ckatorch"), ("cka", "pytorch-cka"), ("torch_cka", "torch_cka")):
        try:
            found[label] = __import__(mod, fromlist=["_"])
        except Exception as exc:  # noqa: BLE001 - a missing or broken peer is reported, not fatal
            print(f"  peer {label}: not available ({type(exc).__name__}: {exc})")
    # cka-pytorch's package imports lightning; its HSIC kernel file needs only torch
    if peers_dir:
        import importlib.util
        from pathlib import Path

        f = Path(peers_dir) / "cka_pytorch" / "hsic.py"
        if f.exists():
            spec = importlib.util.spec_from_file_location("cka_pytorch_hsic", f)
            mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(mod)  # type: ignore[union-attr]
            found["cka-pytorch"] = mod
    return found


def peer_pair_functions(peers: dict[str, object]) -> dict[str, Callable[[torch.Tensor, torch.Tensor], float]]:
    out: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {}
    if "ckatorch" in peers:
        out["ckatorch cka_base (float64 Grams)"] = lambda x, y: float(peers["ckatorch"].cka_base(x, y))  # type: ignore[attr-defined]
    if "pytorch-cka" in peers:
        out["pytorch-cka cka_from_features (unbiased)"] = lambda x, y: float(
            peers["pytorch-cka"].cka_from_features(x, y)[0, 0]
        )  # type: ignore[attr-defined]
    return out


# ----------------------------------------------------------------------------- sections
def bench_pair(
    n: int, d: int, repeats: int, peak: float, peak_best: float, peers: dict[str, object], cap: float = 90.0
) -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, 64, generator=g)
    x = torch.relu(z @ torch.randn(64, d, generator=g) + 0.1 * torch.randn(n, d, generator=g))
    y = torch.relu(z @ torch.randn(64, d, generator=g) + 0.5 * torch.randn(n, d, generator=g))
    xn, yn = x.numpy(), y.numpy()
    issue = 2 * n * d * d
    exact = 2 * n * d * d + n * d * d + n * d * d
    print(f"\n== single linear CKA, n={n}, d1=d2={d}")
    print(f"   FLOP bound at the torch peak: issue count {issue / peak:.3f} s, exact count {exact / peak:.3f} s")
    fns: dict[str, Callable[[], object]] = {
        "rtk linear_cka": lambda: K.linear_cka(x, y),
        "rtk linear_cka debiased": lambda: K.linear_cka(x, y, debiased=True),
        "numpy feature-space (best peer of the issue)": lambda: numpy_feature_cka(xn, yn),
    }
    for name, f in peer_pair_functions(peers).items():
        fns[name] = lambda f=f: f(x, y)
    times, values = interleave(fns, repeats, cap=cap)
    ref = reference64(x, y)
    ref_d = reference64(x, y, debiased=True)
    base = times["rtk linear_cka"]
    for name, t in times.items():
        r = ref_d if ("debiased" in name or "unbiased" in name) else ref
        err = abs(float(values[name]) - r)  # type: ignore[arg-type]
        print(
            f"   {name:<46} {t:7.3f} s  x{t / (issue / peak):5.2f} issue bound  x{t / (exact / peak):5.2f} exact "
            f"bound (x{t / (exact / peak_best):4.2f} at best peak)  rtk is {t / base:5.2f}x faster  |err| {err:.1e}"
        )


def layer_widths(lo: int, hi: int, count: int) -> list[int]:
    return [int(round(lo * (hi / lo) ** (i / (count - 1)))) for i in range(count)]


def bench_heatmap(
    n: int, widths: list[int], repeats: int, peak: float, peak_best: float, peers: dict[str, object], dev: torch.device
) -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, 96, generator=g)
    feats = [
        torch.relu(z @ torch.randn(96, d, generator=g) + 0.3 * torch.randn(n, d, generator=g)).to(dev) for d in widths
    ]
    nl = len(widths)
    sd = sum(widths)
    issue = 2 * n * n * sd + 2 * nl * nl * n * n
    exact = n * n * sd + nl * (nl + 1) // 2 * n * n
    print(f"\n== {nl} x {nl} linear CKA heatmap, n={n}, d={widths[0]}..{widths[-1]} (sum {sd}), device {dev}")
    print(f"   FLOP bound at the torch peak: issue count {issue / peak:.2f} s, exact count {exact / peak:.2f} s")
    mirror = [(i, nl - 1 - i) for i in range(nl // 2)]  # their widths average to the mean of all L^2 pairs
    fns: dict[str, Callable[[], object]] = {"rtk linear_cka_matrix": lambda: K.linear_cka_matrix(feats)}
    fns["rtk per pair (mirror sample)"] = lambda: [K.linear_cka(feats[i], feats[j]) for i, j in mirror]
    fns["textbook per pair (mirror sample)"] = lambda: [textbook_pair_cka(feats[i], feats[j]) for i, j in mirror]
    if "ckatorch" in peers and dev.type == "cpu":
        fns["ckatorch per pair (mirror sample)"] = (
            lambda: [
                float(peers["ckatorch"].cka_base(feats[i], feats[j]))  # type: ignore[attr-defined]
                for i, j in mirror[:2]
            ]
        )
    if "pytorch-cka" in peers:
        fns["pytorch-cka cka_from_features (one Gram per layer)"] = lambda: peers["pytorch-cka"].cka_from_features(
            feats, feats
        )  # type: ignore[attr-defined]
    times, values = interleave(fns, repeats, dev, cap=60.0)
    mat = values["rtk linear_cka_matrix"]
    t0 = times["rtk linear_cka_matrix"]
    full = {"rtk linear_cka_matrix": t0}
    scale_all = nl * nl / len(mirror)
    for name, t in times.items():
        if name == "rtk linear_cka_matrix":
            continue
        if "ckatorch" in name:
            full[name.replace("mirror sample", f"{nl * nl} pairs, extrapolated from 2")] = t * nl * nl / 2
        elif "mirror" in name:
            full[name.replace("mirror sample", f"{nl * nl} pairs, extrapolated from {len(mirror)}")] = t * scale_all
        else:
            full[name] = t
    for name, t in full.items():
        print(
            f"   {name:<62} {t:8.2f} s  x{t / (issue / peak):5.2f} issue bound  x{t / (exact / peak):5.2f} exact "
            f"bound (x{t / (exact / peak_best):4.2f} at best peak)  rtk is {t / t0:6.1f}x faster"
        )
    ref = np.array([[reference64(feats[i].cpu(), feats[j].cpu()) for j in (0, nl // 2, nl - 1)] for i in (0, nl - 1)])
    got = mat[[0, nl - 1]][:, [0, nl // 2, nl - 1]].cpu().numpy()  # type: ignore[index]
    print(f"   rtk vs float64 reference (6 entries): max |err| {np.abs(got - ref).max():.1e}")
    if "pytorch-cka cka_from_features (one Gram per layer)" in values:
        pv = values["pytorch-cka cka_from_features (one Gram per layer)"]
        ref_u = reference64(feats[0].cpu(), feats[-1].cpu(), debiased=True)
        print(f"   pytorch-cka (unbiased, float32) entry [0, L-1]: {float(pv[0, -1]):.6f} vs float64 {ref_u:.6f}")  # type: ignore[index]
    if dev.type == "cuda":
        print(f"   achieved {exact / t0 / 1e12:.2f} TFLOP/s (exact count) on {torch.cuda.get_device_name(dev)}")


def bench_minibatch(
    batches: int, b: int, widths: list[int], repeats: int, peers: dict[str, object], dev: torch.device
) -> None:
    g = torch.Generator().manual_seed(2)
    data = [[torch.randn(b, d, generator=g).relu_().to(dev) for d in widths] for _ in range(batches)]
    nl = len(widths)
    print(f"\n== minibatch CKA, {batches} batches of {b}, {nl} layers (d={widths[0]}..{widths[-1]}), all L^2 pairs")

    def rtk_run(nb: int):
        acc = MinibatchCKA()
        for batch in data[:nb]:
            acc.update(batch)
        return acc

    def per_pair_hsic():
        # what per-pair minibatch packages do: for every pair and batch, Grams and three HSIC_1
        h = torch.zeros(nl, nl, 3, dtype=torch.float64)
        for batch in data:
            grams = [f @ f.T for f in batch]
            for i in range(nl):
                for j in range(nl):
                    sub = K.hsic1_matrix(torch.stack([grams[i], grams[j]]))
                    h[i, j] += torch.tensor([float(sub[0, 1]), float(sub[0, 0]), float(sub[1, 1])], dtype=torch.float64)
        return h

    fns: dict[str, Callable[[], object]] = {
        "rtk MinibatchCKA": lambda: rtk_run(batches),
        "per-pair HSIC_1 loop": per_pair_hsic,
    }
    if "torch_cka" in peers:
        helper = SimpleNamespace(device=str(dev))
        hs = peers["torch_cka"].CKA._HSIC  # type: ignore[attr-defined]

        def torch_cka_loop():
            for batch in data[:2]:
                for i in range(nl):
                    k = batch[i] @ batch[i].T
                    k.fill_diagonal_(0.0)
                    hs(helper, k, k)
                    for j in range(nl):
                        lm = batch[j] @ batch[j].T
                        lm.fill_diagonal_(0.0)
                        hs(helper, k, lm)
                        hs(helper, lm, lm)

        fns["torch_cka _HSIC loop (2 batches, extrapolated)"] = torch_cka_loop
    if "cka-pytorch" in peers:
        hsic1 = peers["cka-pytorch"].hsic1  # type: ignore[attr-defined]

        def cka_pytorch_loop():
            for batch in data[:2]:
                grams = [f @ f.T for f in batch]
                for i in range(nl):
                    for j in range(nl):
                        gx, gy = grams[i][None], grams[j][None]
                        hsic1(gx, gy), hsic1(gx, gx), hsic1(gy, gy)

        fns["cka-pytorch hsic1 per pair (2 batches, extrapolated)"] = cka_pytorch_loop
    times, values = interleave(fns, repeats, dev)
    t0 = times["rtk MinibatchCKA"]
    for name, t in times.items():
        tt = t * batches / 2 if "extrapolated" in name else t
        print(f"   {name:<50} {tt:7.3f} s  rtk is {tt / t0:6.1f}x faster")
    a20 = rtk_run(batches)
    a40 = rtk_run(batches // 2)
    state = a20.state_dict()["sum"]
    print(
        f"   accumulator state: {state.numel()} float64 ({state.numel() * 8} bytes) after {a40.batches} and after "
        f"{a20.batches} batches (the same); transient per batch: {nl} Grams of {b}x{b}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a minute instead of several)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peers-dir", default="/tmp/rtk-bench-peers", help="where peers are (or get) installed")
    ap.add_argument("--install-peers", action="store_true", help=f"pip install {' '.join(PEERS)} into --peers-dir")
    ap.add_argument(
        "--cap",
        type=float,
        default=90.0,
        help="a function whose first run takes longer than this (s) is run once, not repeated",
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["pair", "heatmap", "minibatch"])
    args = ap.parse_args()
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy {np.__version__}")
    peak, peak_n = gemm_peak(cpu)
    best = max(peak, peak_n or 0.0)
    print(
        f"fp32 GEMM peak (4096^3, median of 3): torch {peak / 1e9:.1f} GFLOP/s, numpy {(peak_n or 0) / 1e9:.1f} GFLOP/s"
    )
    peers = load_peers(args.peers_dir, args.install_peers)
    if args.quick:
        pair, hm_n, hm_w, mb = (4000, 1024), 2000, layer_widths(256, 2048, 12), (20, 256, layer_widths(128, 1024, 12))
    else:
        pair, hm_n, hm_w, mb = (10000, 2048), 5000, layer_widths(512, 8192, 12), (20, 256, layer_widths(256, 4096, 12))
    if "pair" not in args.skip:
        bench_pair(*pair, args.repeats, peak, best, peers, cap=args.cap)
    if "heatmap" not in args.skip:
        bench_heatmap(hm_n, hm_w, max(1, args.repeats - 1), peak, best, peers, cpu)
        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            gp, _ = gemm_peak(gpu, 8192)
            print(f"\nCUDA fp32 GEMM peak: {gp / 1e12:.2f} TFLOP/s")
            bench_heatmap(hm_n, hm_w, args.repeats, gp, gp, {}, gpu)
    if "minibatch" not in args.skip:
        bench_minibatch(*mb, args.repeats, peers, cpu)
    print(
        "\n(ratios above 1 against a bound mean slower than the bound; 'issue' counts only the cross term of a "
        "pair, which no exact method can reach: see the module doc)"
    )


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------- the issue's rows (for run_all.py)
def numpy_rbf_cka(x: np.ndarray, y: np.ndarray, sigma: float = 0.8) -> float:
    """RBF CKA as the plain NumPy formula of Kornblith et al. (2019) is written: a Gram,
    squared distances and the kernel as new arrays, the median by ``np.median``, centring
    by column and row means, one Frobenius product; in the input's precision (float32 here).
    The bandwidth rule is rtk's (``sigma`` times the median distance over distinct pairs),
    so both compute the same quantity."""

    def kernel(a: np.ndarray) -> np.ndarray:
        a = a - a.mean(0)
        dots = a @ a.T
        sq = np.diag(dots)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * dots, 0)
        med = np.median(np.sqrt(d2[np.triu_indices(len(a), 1)]))
        return np.exp(-d2 / (2 * (sigma * med) ** 2))

    def centred(k: np.ndarray) -> np.ndarray:
        m = k.mean(0)
        return k - m[:, None] - m[None, :] + m.mean()

    kc, lc = centred(kernel(x)), centred(kernel(y))
    return float(np.vdot(kc, lc) / np.sqrt(np.vdot(kc, kc) * np.vdot(lc, lc)))


def svcca_google_formula(x: np.ndarray, y: np.ndarray, keep: float = 0.99, epsilon: float = 1e-10) -> float:
    """SVCCA as google/svcca computes it (Raghu et al. 2017), written here from its
    description: the SVD of each centred representation keeps the top directions that
    explain ``keep`` of the variance; CCA of the reduced activations from float64
    covariances, each regularised by ``epsilon`` and whitened by an inverse square root
    from an eigendecomposition; SVCCA is the mean of the singular values of the whitened
    cross-covariance."""

    def reduced(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        a = a - a.mean(0)
        u, s, _ = np.linalg.svd(a, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), keep - 1e-12) + 1)
        return u[:, :k] * s[:k]

    def inv_sqrt(c: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh(c)
        return (v / np.sqrt(np.maximum(w, epsilon))) @ v.T

    a, b = reduced(x), reduced(y)
    n = a.shape[0]
    cxx = a.T @ a / (n - 1) + epsilon * np.eye(a.shape[1])
    cyy = b.T @ b / (n - 1) + epsilon * np.eye(b.shape[1])
    cxy = a.T @ b / (n - 1)
    t = inv_sqrt(cxx) @ cxy @ inv_sqrt(cyy)
    return float(np.linalg.svd(t, compute_uv=False).clip(0, 1).mean())


def numpy_linear_cka64(x: np.ndarray, y: np.ndarray) -> float:
    """The float64 reference: the feature-space formula on the inputs converted to float64."""
    return numpy_feature_cka(x.astype(np.float64), y.astype(np.float64))


def minibatch_reference64(batches: list[list[torch.Tensor]]) -> np.ndarray:
    """Minibatch CKA between all layers in float64, written from Nguyen et al. (2021):
    Song et al.'s unbiased HSIC per batch, averaged, then normalised."""
    nl = len(batches[0])
    acc = np.zeros((nl, nl))
    for batch in batches:
        ks = []
        for f in batch:
            a = f.double().numpy()
            k = a @ a.T
            np.fill_diagonal(k, 0.0)
            ks.append(k)
        b = ks[0].shape[0]
        flat = np.stack([k.reshape(-1) for k in ks])
        rows = np.stack([k.sum(1) for k in ks])
        tot = rows.sum(1)
        acc += (flat @ flat.T + np.outer(tot, tot) / ((b - 1) * (b - 2)) - 2 / (b - 2) * rows @ rows.T) / (b * (b - 3))
    d = np.sqrt(np.diag(acc))
    return acc / np.outer(d, d)


class _Replay(torch.nn.Module):
    """A 'model' whose layers output stored features: batch ``i`` is the input ``[b, 1]``
    filled with ``i``. It lets pytorch-cka's ``compute_cka`` (hooks on modules, a loader)
    run on exactly the features rtk gets."""

    def __init__(self, batches: list[list[torch.Tensor]]) -> None:
        super().__init__()
        self.batches = batches
        self.layers = torch.nn.ModuleList(_Layer(self, i) for i in range(len(batches[0])))

    def forward(self, x: torch.Tensor) -> None:
        bid = int(x[0, 0])
        for layer in self.layers:
            layer(bid)


class _Loader:
    """An iterable of batches with a length (a list would be taken as a list of loaders)."""

    def __init__(self, batches: list[torch.Tensor]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class _Layer(torch.nn.Module):
    def __init__(self, owner: _Replay, i: int) -> None:
        super().__init__()
        self.i = i
        self._owner = [owner]

    def forward(self, bid: int) -> torch.Tensor:
        return self._owner[0].batches[bid][self.i]


def _related(n: int, widths: list[int], seed: int, noise: float = 0.3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 64, generator=g)
    return [torch.relu(z @ torch.randn(64, d, generator=g) + noise * torch.randn(n, d, generator=g)) for d in widths]


def _row(workload, times, rtk, peer, flops, peak, goal, note, bound=""):
    """One table row; ``bound`` says which flop count the bound ratio uses (the least any
    exact method computes, symmetric products counted once)."""
    rtk_s = times[rtk]
    if bound:
        note = f"{note}; bound: {bound} = {flops:.3g} flop"
    peer_s = times.get(peer) if peer else None
    return {
        "workload": workload,
        "rtk_s": rtk_s,
        "peer": peer or "none installed",
        "peer_s": peer_s,
        "ratio": rtk_s / peer_s if peer_s else None,
        "bound_ratio": rtk_s / (flops / peak) if flops else None,
        "goal": goal,
        "note": note,
    }


def rows(
    quick: bool, peak: float | None = None, peers: dict[str, object] | None = None, repeats: int = 3
) -> list[dict]:
    """The similarity rows of issue 19's table, each workload's sides interleaved. ``peak``:
    the best fp32 GEMM rate (flop/s) measured in the same run (measured here when None);
    ``peers``: from :func:`load_peers`. Times are medians; ``ratio`` is rtk's time over the
    best peer's (below 1: rtk ahead); ``bound_ratio`` rtk's time over the minimal flop
    count (symmetric products counted once) at ``peak``."""
    if peak is None:
        pt, pn = gemm_peak(torch.device("cpu"), 1024 if quick else 4096)
        peak = max(pt, pn or 0.0)
    peers = peers if peers is not None else {}
    out: list[dict] = []
    out.append(_minibatch_row(quick, peak, peers, repeats))
    out.append(_rbf_row(quick, peak, repeats))
    out.append(_linear_row(quick, peak, repeats))
    out.append(_svcca_row(quick, peak, repeats))
    out.append(_heatmap_row(quick, peak, peers, repeats))
    return out


def _minibatch_row(quick: bool, peak: float, peers: dict[str, object], repeats: int) -> dict:
    nb, b, widths = (4, 64, layer_widths(32, 256, 6)) if quick else (20, 256, layer_widths(512, 8192, 12))
    g = torch.Generator().manual_seed(2)
    data = [[torch.randn(b, d, generator=g).relu_() for d in widths] for _ in range(nb)]

    def rtk_run():
        acc = MinibatchCKA()
        for batch in data:
            acc.update(batch)
        return acc.compute().numpy()

    fns: dict[str, Callable[[], object]] = {"rtk MinibatchCKA": rtk_run}
    if "pytorch-cka" in peers:
        model = _Replay(data)
        loader = _Loader([torch.full((b, 1), float(i)) for i in range(nb)])
        names = [f"layers.{i}" for i in range(len(widths))]
        compute = peers["pytorch-cka"].compute_cka  # type: ignore[attr-defined]
        fns["pytorch-cka compute_cka"] = lambda: compute(
            model, model, loader, layers=names, device="cpu", progress=False
        )[0].numpy()
    times, values = interleave(fns, repeats)
    ref = minibatch_reference64(data)
    errs = {k: float(np.abs(np.asarray(v, dtype=np.float64) - ref).max()) for k, v in values.items()}
    flops = nb * b * b * sum(widths)
    peer = "pytorch-cka compute_cka" if "pytorch-cka compute_cka" in times else None
    note = f"max error vs float64: rtk {errs['rtk MinibatchCKA']:.1e}" + (f", peer {errs[peer]:.1e}" if peer else "")
    return _row(
        f"minibatch unbiased CKA, {len(widths)} layers (d {widths[0]}..{widths[-1]}), {nb} batches of {b}",
        times,
        "rtk MinibatchCKA",
        peer,
        flops,
        peak,
        "ahead of every peer, <= 2x bound",
        note,
        "batches * b^2 * sum(d) (one symmetric Gram per layer and batch)",
    )


def _pair_row(
    workload: str,
    sides: dict[str, Callable[[], object]],
    ref: float,
    flops: int,
    peak: float,
    goal: str,
    repeats: int,
    bound: str = "",
) -> dict:
    """A one-pair workload: rtk (the first side) against one peer, errors against ``ref``."""
    times, values = interleave(sides, repeats)
    rtk, peer = list(sides)
    errs = {k: abs(float(v) - ref) for k, v in values.items()}  # type: ignore[arg-type]
    note = f"error vs float64: rtk {errs[rtk]:.1e}, peer {errs[peer]:.1e}"
    return _row(workload, times, rtk, peer, flops, peak, goal, note, bound)


def _rbf_row(quick: bool, peak: float, repeats: int) -> dict:
    n, d = (300, 48) if quick else (5000, 2048)
    x, y = _related(n, [d, d], seed=3)
    xn, yn = x.numpy(), y.numpy()
    sides = {
        "rtk rbf_cka": lambda: K.rbf_cka(x, y),
        "NumPy formula (Kornblith et al.)": lambda: numpy_rbf_cka(xn, yn),
    }
    ref = numpy_rbf_cka(xn.astype(np.float64), yn.astype(np.float64))
    goal = "ahead at <= 1e-8 error, <= 3x bound"
    bound = "2 n^2 d (one symmetric Gram per representation)"
    return _pair_row(f"RBF CKA, n = {n:,}, d = {d:,}", sides, ref, 2 * n * n * d, peak, goal, repeats, bound)


def _linear_row(quick: bool, peak: float, repeats: int) -> dict:
    n, d = (1500, 128) if quick else (10000, 2048)
    x, y = _related(n, [d, d], seed=4)
    xn, yn = x.numpy(), y.numpy()
    sides = {"rtk linear_cka": lambda: K.linear_cka(x, y), "NumPy formula": lambda: numpy_feature_cka(xn, yn)}
    goal = ">= 1.1x ahead, <= 1.3x bound, error <= 1e-8"
    flops = 4 * n * d * d
    bound = "4 n d^2 (X^T Y: 2 n d^2; X^T X, Y^T Y: n d^2 each, symmetric products counted once)"
    ref = numpy_linear_cka64(xn, yn)
    return _pair_row(f"linear CKA, n = {n:,}, d = {d:,}", sides, ref, flops, peak, goal, repeats, bound)


def _svcca_row(quick: bool, peak: float, repeats: int) -> dict:
    n, d = (600, 48) if quick else (5000, 512)
    x, y = _related(n, [d, d], seed=5, noise=0.5)
    xn, yn = x.numpy(), y.numpy()
    sides = {"rtk svcca": lambda: K.svcca(x, y), "google/svcca formula": lambda: svcca_google_formula(xn, yn)}
    ref = float(K.cca_data(x.double(), y.double(), variance=0.99).rho.mean())  # the SVD route, float64
    bound = (
        "4 n d^2 (the covariances, symmetric ones counted once; the d x d eigendecompositions not counted), "
        "at the fp32 peak"
    )
    row = _pair_row(f"SVCCA, n = {n:,}, d = {d:,}", sides, ref, 4 * n * d * d, peak, "<= 3x bound", repeats, bound)
    # what the bound leaves out: the float64 products the 1e-8 error needs, and the decompositions
    m = K.moments(x, y)
    a, c = x.double().numpy(), y.double().numpy()
    t_eigh = statistics.median(
        timed(lambda: (np.linalg.eigh(m.cxx.numpy()), np.linalg.eigh(m.cyy.numpy())))[0] for _ in range(3)
    )
    t_f64 = statistics.median(timed(lambda: (a.T @ a, c.T @ c, a.T @ c))[0] for _ in range(3))
    row["note"] += (
        f"; not in the bound: the two {d}x{d} eigendecompositions (one after the other, threaded) took "
        f"{t_eigh:.3f} s ({t_eigh / (4 * n * d * d / peak):.1f}x bound), the covariances as float64 products "
        f"(which the error needs) {t_f64:.3f} s ({t_f64 / (4 * n * d * d / peak):.1f}x bound)"
    )
    return row


def _heatmap_row(quick: bool, peak: float, peers: dict[str, object], repeats: int) -> dict:
    n, widths = (200, layer_widths(16, 256, 12)) if quick else (5000, layer_widths(512, 8192, 12))
    feats = _related(n, widths, seed=1)
    fns: dict[str, Callable[[], object]] = {"rtk linear_cka_matrix": lambda: K.linear_cka_matrix(feats).numpy()}
    if "pytorch-cka" in peers:
        fn = peers["pytorch-cka"].cka_from_features  # type: ignore[attr-defined]
        fns["pytorch-cka cka_from_features"] = lambda: fn(feats, feats).numpy()
    times, values = interleave(fns, max(1, repeats - 1))
    picks = [(0, len(widths) // 2), (0, len(widths) - 1), (len(widths) // 2, len(widths) - 1)]
    ref = {p: numpy_linear_cka64(feats[p[0]].numpy(), feats[p[1]].numpy()) for p in picks}
    err = max(abs(float(values["rtk linear_cka_matrix"][p]) - r) for p, r in ref.items())  # type: ignore[index]
    nl = len(widths)
    flops = n * n * sum(widths) + nl * (nl + 1) // 2 * n * n
    peer = "pytorch-cka cka_from_features" if "pytorch-cka cka_from_features" in times else None
    return _row(
        f"{nl}x{nl} linear CKA heatmap, n = {n:,} (d {widths[0]}..{widths[-1]})",
        times,
        "rtk linear_cka_matrix",
        peer,
        flops,
        peak,
        "keep ahead; <= 1.5x bound",
        f"rtk max error vs float64 (3 entries): {err:.1e}" + ("; the peer computes unbiased CKA" if peer else ""),
        "n^2 sum(d) + L(L+1)/2 n^2 (symmetric Grams and Gram products)",
    )

"""Unforeseen attacks (Kang, Sun, Hendrycks, Brown, Steinhardt 2019, "Testing robustness against
unforeseen adversaries"): JPEG, Gabor and Snow, the three that paper 1 (Cianfarani et al. 2022)
probes its models with.

Each attack optimises its own parameters by signed (or, for JPEG in L2, normalised) gradient
ascent of the cross-entropy, and each has its own threat model, not an Lp ball in pixel space:

- **JPEG**: ``x' = decode(encode(x) + nu)``, where ``encode`` is the JPEG transform (RGB to YCbCr,
  8x8 blocks, DCT, division by the quality-scaled quantization tables, no rounding) and ``nu`` is a
  perturbation of the quantized coefficients, in quantization steps, with ``||nu||_inf <= eps``
  (or ``||nu||_2 <= eps``). ``nu = 0`` gives back ``x``.
- **Gabor**: ``x' = clip(x + eps * n)``, where ``n`` is Gabor noise: a sparse grid of variables in
  [-1, 1] convolved with a random Gabor kernel (a sum of rotated Gabor filters), divided by its
  largest magnitude. So ``||x' - x||_inf <= eps``; the attack searches the variables.
- **Snow**: ``x' = clip(discolor(x) + eps * s)``, where ``s`` is a sum of snowflakes: flake grids
  whose intensities ``v`` (in [0, 1], seven directions, one variable per 4x4 pixels) are raised to
  the 4th power and convolved with random blurred streak kernels. The budget is ``v <= 1`` and a
  mean intensity of at most ``budget`` per region of 8x8 variables (the flake density).

Where rtk differs from Kang et al.'s code (``ddkang/advex-uar``, also vendored in
``inspire-group/robust_representation_similarity``), on purpose:

- JPEG keeps the chroma channels at full resolution (their code subsamples 4:2:0, so their
  unperturbed image is not the input); images whose sides are not multiples of 8 are padded by
  replication and cropped back (theirs must be multiples of 16).
- Gabor noise is scaled to [-1, 1] by its largest magnitude (theirs is min-max scaled to [0, 1]
  after a contrast equalisation, so it only brightens); the variables live on their sparse
  support (their mask keeps the complement, a slip that makes the search start from zero).
- Snow's regions shrink to the whole grid on images smaller than 32x32 pixels.
- Every attack attacks only the examples the model classifies correctly (the others come back
  unchanged) and keeps, per example, the first iterate that fools the model, else the last.

All randomness (initialisation, kernels, supports) comes from a generator seeded by ``seed``;
the global RNG is left untouched, so an attack is deterministic under its seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import RtkError
from ..options import NormLinfL2, check_norm

# ----------------------------------------------------------------------------- common loop
#: JPEG's standard quantization tables (ITU-T T.81, Annex K), quality 50.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4


@dataclass(frozen=True)
class UnforeseenResult:
    """An attack's adversarial inputs and the parameters that produced them (``nu`` for JPEG,
    the grid variables for Gabor, the flake intensities for Snow), one row per example."""

    x_adv: Tensor
    params: Tensor


def _check_images(x: Tensor, y: Tensor, name: str) -> None:
    if x.ndim != 4:
        raise RtkError(f"attack {name}: expected images of shape [N, C, H, W], got {list(x.shape)}")
    if y.shape != (x.shape[0],):
        raise RtkError(f"attack {name}: expected {x.shape[0]} labels, got shape {list(y.shape)}")


def _ascend(
    model: nn.Module,
    y: Tensor,
    v: Tensor,
    render: Callable[[Tensor], Tensor],
    update: Callable[[Tensor, Tensor], Tensor],
    steps: int,
) -> Tensor:
    """Gradient ascent of the cross-entropy over the attack parameters ``v`` (one row per
    example, labels ``y``): ``v <- update(v, grad)`` for ``steps`` steps; ``render(v)`` maps the
    parameters to images. Returns per example the first iterate that fools ``model``, else the
    last."""
    best = v.detach().clone()
    done = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    for t in range(steps + 1):
        v = v.detach().requires_grad_(True)
        logits = model(render(v))
        fooled = logits.argmax(1) != y
        new = fooled & ~done
        best[new] = v.detach()[new]
        done |= fooled
        if t == steps or bool(done.all()):
            break
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), v)
        v = update(v.detach(), grad)
    best[~done] = v.detach()[~done]
    return best


def _run(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    init: Tensor,
    render: Callable[[Tensor, Tensor], Tensor],
    update: Callable[[Tensor, Tensor, Tensor], Tensor],
    steps: int,
) -> UnforeseenResult:
    """Attack the examples ``model`` classifies correctly (the others keep ``x`` and zero
    parameters), in eval mode, leaving parameter gradients alone."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        params = torch.zeros_like(init)
        x_adv = x.detach().clone()
        todo = torch.nonzero(correct).flatten()
        if todo.numel():  # the parameters of the examples todo (render and update take their indices)
            best = _ascend(
                model, y[todo], init[todo], lambda v: render(v, todo), lambda v, grad: update(v, grad, todo), steps
            )
            params[todo] = best
            with torch.no_grad():
                x_adv[todo] = render(best, todo)
        return UnforeseenResult(x_adv.detach(), params.detach())
    finally:
        model.train(was_training)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _linf_update(step: float, eps: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    return lambda v, g, idx: (v + step * g.sign()).clamp(-eps, eps)


def _l2_update(step: float, eps: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def update(v: Tensor, g: Tensor, idx: Tensor) -> Tensor:
        flat = g.flatten(1)
        g = g / flat.norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.ndim - 1)))
        v = v + step * g
        norm = v.flatten(1).norm(dim=1).clamp_min(1e-12)
        return v * (eps / norm).clamp(max=1.0).view(-1, *([1] * (v.ndim - 1)))

    return update


# ----------------------------------------------------------------------------- JPEG
def dct_matrix(n: int = 8, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (rows are frequencies): a block's coefficients are
    ``D @ block @ D.T``, JPEG's scaling exactly."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d.to(dtype=dtype, device=device)


def quality_scale(quality: int) -> float:
    """The libjpeg factor on the quality-50 tables: ``50 / q`` below 50, ``2 - q / 50`` above."""
    if not 1 <= quality <= 100:
        raise RtkError(f"JPEG quality must be in 1..100, got {quality}")
    return 50.0 / quality if quality < 50 else max(2.0 - quality / 50.0, 0.01)


#: RGB -> YCbCr as JPEG (JFIF) defines it, on 0..255 values (the chroma offset 128 is added apart).
_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


class JPEGCodec:
    """The differentiable JPEG transform of images in [0, 1] (N, C, H, W) with C = 1 (luma) or
    C = 3 (RGB): ``encode`` gives quantized DCT coefficients (N, C, H8/8, W8/8, 8, 8) in
    quantization steps, ``decode`` maps them back to images (unclipped)."""

    def __init__(self, channels: int, height: int, width: int, quality: int = 50, *, device=None) -> None:
        if channels not in (1, 3):
            raise RtkError(f"attack jpeg: needs 1 (grayscale) or 3 (RGB) channels, got {channels}")
        self.channels, self.height, self.width = channels, height, width
        self.h8, self.w8 = -(-height // 8) * 8, -(-width // 8) * 8
        self.d = dct_matrix(device=device)
        scale = quality_scale(quality)
        tables = [_LUMA_TABLE] + [_CHROMA_TABLE] * (channels - 1)
        self.table = (torch.tensor(tables, dtype=torch.float32, device=device) * scale).clamp_min(1.0)
        m = torch.tensor(_RGB_TO_YCBCR, dtype=torch.float32, device=device)
        self.to_ycc, self.from_ycc = m, torch.linalg.inv(m)
        self.offset = torch.tensor([0.0, 128.0, 128.0], device=device).view(1, 3, 1, 1)

    def coefficient_shape(self, n: int) -> tuple[int, ...]:
        return (n, self.channels, self.h8 // 8, self.w8 // 8, 8, 8)

    def encode(self, x: Tensor) -> Tensor:
        v = x * 255.0
        if self.channels == 3:
            v = torch.einsum("ij,njhw->nihw", self.to_ycc, v) + self.offset
        v = v - 128.0
        ph, pw = self.h8 - self.height, self.w8 - self.width
        if ph or pw:
            v = F.pad(v, (0, pw, 0, ph), mode="replicate")
        n, c = v.shape[:2]
        blocks = v.reshape(n, c, self.h8 // 8, 8, self.w8 // 8, 8).permute(0, 1, 2, 4, 3, 5)
        coeff = self.d @ blocks @ self.d.T
        return coeff / self.table.view(1, c, 1, 1, 8, 8)

    def decode(self, q: Tensor) -> Tensor:
        n, c = q.shape[:2]
        blocks = self.d.T @ (q * self.table.view(1, c, 1, 1, 8, 8)) @ self.d
        v = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, self.h8, self.w8)[:, :, : self.height, : self.width]
        v = v + 128.0
        if self.channels == 3:
            v = torch.einsum("ij,njhw->nihw", self.from_ycc, v - self.offset)
        return v / 255.0


def jpeg_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "Linf",
    quality: int = 50,
    random_start: bool = True,
    seed: int = 0,
) -> UnforeseenResult:
    """JPEG attack: ``x' = clip(decode(encode(x) + nu))`` with ``||nu||_norm <= eps`` (in
    quantization steps); ``params`` are ``nu`` (N, C, H/8, W/8, 8, 8)."""
    _check_images(x, y, "jpeg")
    check_norm(norm, "attack jpeg: norm", allowed=get_args(NormLinfL2))
    codec = JPEGCodec(x.shape[1], x.shape[2], x.shape[3], quality, device=x.device)
    with torch.no_grad():
        q = codec.encode(x.float())
    shape = codec.coefficient_shape(len(x))
    step = step_size if step_size is not None else eps / 4
    g = _generator(seed)
    if not random_start or eps == 0:
        init = torch.zeros(shape)
    elif norm == "Linf":
        init = (torch.rand(shape, generator=g) * 2 - 1) * eps
    else:
        d = torch.randn(shape, generator=g)
        r = torch.rand(len(x), generator=g).view(-1, *([1] * (len(shape) - 1)))
        init = d / d.flatten(1).norm(dim=1).view_as(r) * r * eps
    init = init.to(device=x.device, dtype=q.dtype)
    update = _linf_update(step, eps) if norm == "Linf" else _l2_update(step, eps)

    def render(nu: Tensor, idx: Tensor) -> Tensor:
        return codec.decode(q[idx] + nu).clamp(0, 1).to(x.dtype)

    return _run(model, x, y, init, render, update, steps)


# ----------------------------------------------------------------------------- Gabor
def gabor_kernel(size: int, sigma: float, wavelength: float, theta: float, sides: int = 1) -> Tensor:
    """A Gabor kernel on a ``size`` x ``size`` grid over [-0.5, 0.5]^2: a Gaussian envelope
    (``sigma``) times a cosine of ``wavelength`` cycles per unit along ``theta``, summed over
    ``sides`` orientations spread evenly over half a turn."""
    t = torch.linspace(-0.5, 0.5, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    env = torch.exp(-0.5 * (xx**2 + yy**2) / (sigma + 1e-3) ** 2)
    out = torch.zeros(size, size, dtype=torch.float64)
    for i in range(sides):
        a = theta + math.pi * i / sides
        out += env * torch.cos(2 * math.pi * wavelength * (xx * math.cos(a) + yy * math.sin(a)))
    return out.float()


def _gabor_kernels(n: int, size: int, g: torch.Generator) -> Tensor:
    """One random Gabor kernel per example: 1..10 orientations, sigma in [0.1, 0.4], wavelength in
    [3, max(3, size / 4)] cycles, angle in [0, pi) (Kang et al.'s ranges)."""
    kernels = []
    for _ in range(n):
        sides = int(torch.randint(1, 11, (1,), generator=g))
        u = torch.rand(3, generator=g, dtype=torch.float64).tolist()
        sigma = 0.1 + 0.3 * u[0]
        wavelength = 3.0 + max(size / 4.0 - 3.0, 0.0) * u[1]
        kernels.append(gabor_kernel(size, sigma, wavelength, math.pi * u[2], sides))
    return torch.stack(kernels).unsqueeze(1)


def gabor_noise(v: Tensor, kernels: Tensor) -> Tensor:
    """Gabor noise (N, 1, H, W) in [-1, 1]: each example's variables convolved with its kernel,
    divided by the largest magnitude."""
    n, _, h, w = v.shape
    k = kernels.shape[-1]
    out = F.conv2d(v.reshape(1, n, h, w), kernels, padding=k // 2, groups=n).reshape(n, 1, h, w)
    top = out.detach().abs().flatten(1).amax(1).clamp_min(1e-12).view(n, 1, 1, 1)
    return out / top


def gabor_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float = 0.05,
    kernel_size: int = 23,
    density: float = 1 / 14,
    seed: int = 0,
) -> UnforeseenResult:
    """Gabor attack: ``x' = clip(x + eps * gabor_noise(v))`` with ``v`` in [-1, 1] on a sparse
    random support; ``params`` are ``v`` (N, 1, H, W)."""
    _check_images(x, y, "gabor")
    n, _, h, w = x.shape
    g = _generator(seed)
    support = (torch.rand(n, 1, h, w, generator=g) < density).float()
    empty = support.flatten(1).sum(1) == 0  # at least one variable per example
    if empty.any():
        pick = torch.randint(0, h * w, (int(empty.sum()),), generator=g)
        flat = support.view(n, -1)
        flat[torch.nonzero(empty).flatten(), pick] = 1.0
    init = (torch.rand(n, 1, h, w, generator=g) * 2 - 1) * support
    kernels = _gabor_kernels(n, kernel_size | 1, g).to(x.device)
    support, init = support.to(x.device), init.to(x.device, x.dtype)

    def update(v: Tensor, grad: Tensor, idx: Tensor) -> Tensor:
        return (v + step_size * grad.sign()).clamp(-1, 1) * support[idx]

    def render(v: Tensor, idx: Tensor) -> Tensor:
        return (x[idx] + eps * gabor_noise(v, kernels[idx])).clamp(0, 1)

    return _run(model, x, y, init, render, update, steps)


# ----------------------------------------------------------------------------- Snow
SNOW_DIRECTIONS = 7
_LUMA = (0.2126, 0.7152, 0.0722)


def _streak(size: int, dx: float, dy: float, width: float) -> Tensor:
    """A streak through the kernel's centre along (dx, dy), both ways, with a trapezoid profile
    of ``width`` pixels (anti-aliased)."""
    c = (size - 1) / 2
    t = torch.arange(size, dtype=torch.float64) - c
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    length = math.hypot(dx, dy)
    ux, uy = dx / length, dy / length
    along = (xx * ux + yy * uy).abs()
    across = (xx * uy - yy * ux).abs()
    inside = (along <= length + 0.5).double()
    return ((1 + width / 2 - across).clamp(0, 1) * inside).float()


def _blur(kernel: Tensor, sigma: float) -> Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g1 = torch.exp(-0.5 * (t / sigma) ** 2)
    g1 = g1 / g1.sum()
    g2 = (g1.view(-1, 1) * g1.view(1, -1)).view(1, 1, 2 * r + 1, 2 * r + 1)
    return F.conv2d(kernel.view(1, 1, *kernel.shape), g2, padding=r).view(kernel.shape)


def snow_kernels(size: int, g: torch.Generator) -> Tensor:
    """``SNOW_DIRECTIONS`` streak kernels (7, 1, size, size): random lengths, widths 1/3/5 pixels
    (probabilities 0.6/0.3/0.1), all leaning the same way (a common random flip), blurred by a
    Gaussian of sigma in [0.41, 0.6]."""
    mid = size // 2
    flip = bool(torch.rand(1, generator=g) < 0.5)
    out = []
    for _ in range(SNOW_DIRECTIONS):
        lo = min(2, max(mid, 1))
        dx = float(torch.randint(lo, max(mid, lo) + 1, (1,), generator=g))
        dy = float(torch.randint(lo, max(mid, lo) + 1, (1,), generator=g))
        u = float(torch.rand(1, generator=g))
        width = 1.0 if u < 0.6 else (3.0 if u < 0.9 else 5.0)
        k = _streak(size, -dx if flip else dx, dy, width)
        sigma = 0.41 + 0.19 * float(torch.rand(1, generator=g))
        out.append(_blur(k, sigma))
    return torch.stack(out).unsqueeze(1)


def snow_field(v: Tensor, kernels: Tensor, height: int, width: int) -> Tensor:
    """Snow (N, 1, H, W): intensity ``v[:, d]`` (N, 7, ceil(H/4), ceil(W/4)) raised to the 4th
    power on direction ``d``'s sparse grid (one flake per 4x4 pixels at an offset of its own),
    convolved with that direction's kernel, summed over directions."""
    n = v.shape[0]
    grid = torch.zeros(n, SNOW_DIRECTIONS, height, width, dtype=v.dtype, device=v.device)
    p = v.pow(4)
    for d in range(SNOW_DIRECTIONS):
        r0, c0 = (0, d) if d < 4 else (d - 3, 0)
        rows, cols = len(range(r0, height, 4)), len(range(c0, width, 4))
        grid[:, d, r0::4, c0::4] = p[:, d, :rows, :cols]
    k = kernels.shape[-1]
    return F.conv2d(grid, kernels.transpose(0, 1), padding=k // 2)


def discolor(x: Tensor, amount: float) -> Tensor:
    """The whitening of a snowy scene: a share ``amount`` of ``max(x, 1.5 * luma + 0.5)``."""
    if amount == 0:
        return x
    if x.shape[1] == 3:
        lum = sum(w * x[:, i : i + 1] for i, w in enumerate(_LUMA))
    else:
        lum = x.mean(1, keepdim=True)
    return (1 - amount) * x + amount * torch.maximum(x, lum * 1.5 + 0.5)


def snow_regions(grid_h: int, grid_w: int, region: int = 8) -> tuple[int, int]:
    """The side of a budget region on the intensity grid: ``region`` or the whole grid when smaller."""
    return min(region, grid_h), min(region, grid_w)


def snow_project(v: Tensor, budget: float, region: int = 8) -> Tensor:
    """Intensities in [0, 1] with a mean of at most ``budget`` over every region (and direction):
    regions over budget are scaled down to it."""
    v = v.clamp(0, 1)
    n, d, h, w = v.shape
    rh, rw = snow_regions(h, w, region)
    ph, pw = -(-h // rh) * rh, -(-w // rw) * rw
    padded = F.pad(v, (0, pw - w, 0, ph - h))
    counts = F.pad(torch.ones_like(v), (0, pw - w, 0, ph - h))
    sums = F.avg_pool2d(padded, (rh, rw)) * rh * rw
    sizes = F.avg_pool2d(counts, (rh, rw)) * rh * rw
    mean = sums / sizes
    scale = (budget / mean.clamp_min(1e-12)).clamp(max=1.0)
    scale = scale.repeat_interleave(rh, dim=2).repeat_interleave(rw, dim=3)[:, :, :h, :w]
    return v * scale


def snow_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float = 0.1,
    budget: float = 0.15,
    flake_size: int = 13,
    discolor_amount: float = 0.25,
    seed: int = 0,
) -> UnforeseenResult:
    """Snow attack: ``x' = clip(discolor(x) + eps * snow_field(v))`` with intensities ``v`` in
    [0, 1] and at most ``budget`` on average per region; ``params`` are ``v``."""
    _check_images(x, y, "snow")
    n, _, h, w = x.shape
    gh, gw = -(-h // 4), -(-w // 4)
    g = _generator(seed)
    init = torch.exp(-torch.rand(n, SNOW_DIRECTIONS, gh, gw, generator=g) / budget)
    init = snow_project(init, budget).to(x.device, x.dtype)
    kernels = snow_kernels(flake_size | 1, g).to(x.device, x.dtype)
    base = discolor(x, discolor_amount)

    def update(v: Tensor, grad: Tensor, idx: Tensor) -> Tensor:
        return snow_project(v + step_size * grad.sign(), budget)

    def render(v: Tensor, idx: Tensor) -> Tensor:
        return (base[idx] + eps * snow_field(v, kernels, h, w)).clamp(0, 1)

    return _run(model, x, y, init, render, update, steps)


def render_snow(
    x: Tensor, v: Tensor, *, eps: float, flake_size: int = 13, discolor_amount: float = 0.25, seed: int = 0
):
    """The image :func:`snow_attack` (same ``seed`` and ``flake_size``) makes from intensities ``v``."""
    g = _generator(seed)
    torch.rand(*v.shape, generator=g)  # the draw of the initial intensities comes first
    kernels = snow_kernels(flake_size | 1, g).to(x.device, x.dtype)
    return (discolor(x, discolor_amount) + eps * snow_field(v, kernels, x.shape[2], x.shape[3])).clamp(0, 1)


__all__ = [
    "UnforeseenResult",
    "JPEGCodec",
    "dct_matrix",
    "quality_scale",
    "jpeg_attack",
    "gabor_kernel",
    "gabor_noise",
    "gabor_attack",
    "SNOW_DIRECTIONS",
    "snow_kernels",
    "snow_field",
    "snow_project",
    "discolor",
    "snow_attack",
    "render_snow",
]

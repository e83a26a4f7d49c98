"""Built-in attacks, wrapping torchattacks."""

from __future__ import annotations

from pydantic import Field

import rtk


class PGDOptions(rtk.Options):
    eps: rtk.Eps = Field(8 / 255, ge=0, le=1, description="L-inf radius, a float or a fraction such as '8/255'")
    alpha: rtk.Eps | None = Field(None, gt=0, le=1, description="step size; default eps/4")
    steps: int = Field(10, ge=1)
    random_start: bool = True
    seed: int = 0


def _build_pgd(model, o: PGDOptions):
    import torchattacks

    atk = torchattacks.PGD(model, eps=o.eps, alpha=o.alpha if o.alpha is not None else o.eps / 4, steps=o.steps,
                           random_start=o.random_start)

    def attack(x, y):
        with torch_fork_rng(o.seed):
            return atk(x, y)

    return attack


class torch_fork_rng:
    """Run the attack's random start under its own seed without touching the global RNG."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self):
        import torch

        self._ctx = torch.random.fork_rng(devices=[])
        self._ctx.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


@rtk.hookimpl
def rtk_attacks():
    yield rtk.AttackSpec(name="pgd", summary="projected gradient descent, L-inf (Madry et al. 2018), via torchattacks",
                         options=PGDOptions, build=_build_pgd, norm="Linf")

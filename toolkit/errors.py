"""Exceptions raised by rtk. Every message says what was wrong, where, and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RtkError(Exception):
    """Base class of every error rtk raises on purpose."""


class ConfigError(RtkError):
    """An experiment file or an options table is invalid.

    ``problems`` holds one line per problem, each naming the file and the key path.
    """

    def __init__(self, problems: str | list[str], *, source: str | None = None):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        head = f"invalid experiment {source}" if source else "invalid configuration"
        if len(self.problems) == 1:
            msg = f"{head}: {self.problems[0]}"
        else:
            msg = f"{head} ({len(self.problems)} problems):\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(msg)


class PluginError(RtkError):
    """A plugin is broken, or two plugins claim one component name."""


class ComponentError(RtkError):
    """An exception escaped a component (an attack, a trainer, a stage, ...) at run time.

    The message names the component, its kind and the plugin (and distribution) providing
    it; ``cause`` is the original exception (also chained as ``__cause__``).
    """

    def __init__(self, component: str, cause: BaseException):
        self.component = component
        self.cause = cause
        super().__init__(f"{component} raised {type(cause).__name__}: {cause}")


class UnknownComponentError(RtkError, KeyError):
    """A component name is not registered. The message suggests the closest names."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name = kind, name
        self.known = sorted(known)
        close = difflib.get_close_matches(name, self.known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(self.known) if self.known else "(none registered)"
        self.message = f"unknown {kind} {name!r}{hint} Registered {kind}s: {listing}"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class DataError(RtkError):
    """A dataset cannot be found or read."""


class CheckpointError(RtkError):
    """A checkpoint is missing, corrupt, or does not match the architecture."""


class StageError(RtkError):
    """A stage of an experiment failed; names the stage."""

    def __init__(self, stage_id: str, cause: BaseException):
        self.stage_id = stage_id
        self.cause = cause
        what = str(cause) if isinstance(cause, ComponentError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"stage {stage_id!r} failed: {what}")


class TrainingDivergedError(RtkError):
    """The loss became NaN or inf."""


def suggest(name: str, known: Iterable[str], n: int = 3) -> str:
    """A short 'did you mean' hint (at most ``n`` names), or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""

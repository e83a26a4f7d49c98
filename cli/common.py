"""Helpers shared by the CLI verbs: error translation, progress bars, table printing."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from .main import State, _state


def state() -> State:
    return _state(click.get_current_context())


def registry():
    return state().registry


def friendly_errors(fn: Callable) -> Callable:
    """Turn rtk's errors into a ClickException (non-zero exit, one clear message)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from rtk.errors import RtkError

        try:
            return fn(*args, **kwargs)
        except RtkError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


@contextlib.contextmanager
def progress_bars(quiet: bool | None = None) -> Iterator[None]:
    """Progress bars on a terminal; nothing when quiet or not on a TTY."""
    from rtk.runtime import progress_display

    if quiet is None:
        quiet = state().quiet
    if quiet or not sys.stderr.isatty():
        with progress_display(None):
            yield
        return
    from tqdm.auto import tqdm

    def factory(iterable, total=None, desc=""):
        return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)

    with progress_display(factory):
        yield


def echo_table(df, *, floatfmt: str = "{:.4f}") -> None:
    """Print a DataFrame as aligned text."""
    if df is None or len(df) == 0:
        click.echo("(empty)")
        return
    click.echo(df.to_string(index=False, float_format=lambda v: floatfmt.format(v)))

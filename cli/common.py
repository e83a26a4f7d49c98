"""Helpers shared by the CLI verbs: error translation, progress bars, table printing."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from .main import State, _state

#: The type of every ``--seed`` flag: 0 to rtk.config.MAX_SEED (a test keeps the two equal).
SEED = click.IntRange(0, 2**62)


def key_value_option(*decls: str, **attrs: Any) -> Callable[[Callable], Callable]:
    """A repeatable ``KEY=VALUE`` flag: an option (``-o steps=7``, read with :func:`key_values`)
    or a key path (``--set stages.train.epochs=30``)."""
    return click.option(*decls, multiple=True, metavar="KEY=VALUE", **attrs)


def component_option(*decls: str, **attrs: Any) -> Callable[[Callable], Callable]:
    """A repeatable component flag, ``NAME[:K=V,...]`` (``--attack pgd:eps=8/255``), read with
    :func:`parse_component`."""
    return click.option(*decls, multiple=True, metavar="NAME[:K=V,...]", **attrs)


def run_directory_options(*, out: str, resume: str, skips: str) -> Callable[[Callable], Callable]:
    """The flags of a verb that runs one stage into a run directory (evaluate, train), in this order:
    --seed, --device, --out (help naming its default directory ``out``), --resume (help ``resume``),
    --runs-root and --dry-run (help naming what it ``skips``)."""
    options = [
        click.option("--seed", type=SEED, default=0, show_default=True),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), help=f"Run directory (default {out})."),
        click.option("--resume", type=click.Path(file_okay=False, exists=True, path_type=Path), help=resume),
        click.option(
            "--runs-root", default="runs", show_default=True, type=click.Path(file_okay=False, path_type=Path)
        ),
        click.option("--dry-run", is_flag=True, help=f"Validate and print the plan; {skips} nothing."),
    ]

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def execute_or_describe(
    planned: Any, *, dry_run: bool, failed: Callable[[Exception], str], skipped: str = "nothing was run", **run: Any
) -> Any:
    """What a one-stage verb (evaluate, train, prune run) does with its plan: with --dry-run, print
    it and that ``skipped``, and return None; else execute it (``rtk.execute(planned, **run)``)
    under progress bars and return its result, a failed stage becoming a ClickException that
    says ``failed(error)``."""
    import rtk

    if dry_run:
        click.echo(planned.describe())
        click.echo(f"plan is valid; {skipped} (--dry-run).")
        return None
    with progress_bars():
        try:
            return rtk.execute(planned, **run)
        except rtk.StageError as exc:
            raise click.ClickException(failed(exc)) from None


def parse_value(text: str) -> Any:
    """A TOML value (``6``, ``0.5``, ``true``, ``[1, 2]``, ``"x"``), else the text itself
    (``8/255``, ``L2``): the one reader of values given on the command line."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def key_values(items: Iterable[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` items (values read by :func:`parse_value`) -> a dict; a bad item is a
    ``click.BadParameter`` naming ``flag``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=flag)
        out[key.strip()] = parse_value(value.strip())
    return out


def parse_component(text: str, flag: str) -> dict[str, Any] | str:
    """A component on the command line: ``pgd``, ``pgd:eps=8/255,steps=20`` (commas inside
    ``[...]`` stay in the value) or an inline TOML table ``{ name = "pgd", steps = 20 }``."""
    import re

    import tomllib

    text = text.strip()
    if text.startswith("{"):
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise click.BadParameter(f"{text!r} is not a TOML inline table: {exc}", param_hint=flag) from None
    name, _, rest = text.partition(":")
    if not name.strip():
        raise click.BadParameter(f"expected NAME or NAME:KEY=VALUE,..., got {text!r}", param_hint=flag)
    if not rest:
        return name.strip()
    items = [p for p in re.split(r",(?![^\[]*\])", rest) if p.strip()]
    return {"name": name.strip(), **key_values(items, flag)}


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


@contextlib.contextmanager
def study_progress(total: int, quiet: bool | None = None) -> Iterator[Callable[[Any], None] | None]:
    """One bar for a study (points done, running, failed) on a terminal; None (no bar) when
    quiet or not on a TTY. Yields the callback to hand to ``rtk.study.run_study``."""
    if quiet is None:
        quiet = state().quiet
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="points", unit="pt", file=sys.stderr, dynamic_ncols=True)

    def update(p: Any) -> None:
        bar.n = p.done + p.failed
        bar.set_postfix(done=p.done, running=p.running, failed=p.failed, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def echo_table(df, *, floatfmt: str = "{:.4f}") -> None:
    """Print a DataFrame as aligned text."""
    if df is None or len(df) == 0:
        click.echo("(empty)")
        return
    click.echo(df.to_string(index=False, float_format=lambda v: floatfmt.format(v)))


def checkpoint_data(spec: dict[str, Any], where: str) -> dict[str, Any]:
    """The dataset table to rebuild a bare checkpoint's data: the one it recorded, else its data's
    name with default options (said on stderr, with the reason)."""
    from rtk.data.sources import checkpoint_dataset

    recorded, why = checkpoint_dataset(spec)
    if recorded is not None:
        opts = ", ".join(f"{k}={v}" for k, v in recorded.items() if k != "name")
        click.echo(f"dataset: {recorded['name']}{f' ({opts})' if opts else ''}, as recorded in {where}", err=True)
        return recorded
    name = (spec.get("data") or {}).get("name")
    click.echo(f"dataset: {name} with its default options, since {where}: {why}; choose one with --dataset", err=True)
    return {"name": name}


# ---------------------------------------------------------------------------- flags from a typed request
def _is_list(ann: Any) -> bool:
    from typing import get_args, get_origin

    return get_origin(ann) is list or any(get_origin(a) is list for a in get_args(ann))


def _choices(ann: Any) -> tuple[str, ...]:
    from typing import Literal, get_args, get_origin

    for a in (ann, *get_args(ann)):
        if get_origin(a) is Literal:
            return tuple(str(c) for c in get_args(a))
    return ()


def _number_type(ann: Any) -> Any:
    """``click.INT`` / ``click.FLOAT`` for an ``int`` / ``float`` field (optional or not), else None
    (the text goes to the request's validator: ``8/255``, a choice, ...)."""
    from typing import get_args

    kinds = {a for a in (ann, *get_args(ann)) if a is not type(None)}
    if kinds == {int}:
        return click.INT
    if kinds == {float}:
        return click.FLOAT
    return None


def request_flags(
    model: Any,
    fields: Iterable[str] | None = None,
    *,
    skip: Iterable[str] = (),
    flags: dict[str, str] | None = None,
    prefix: str = "",
    defaults: dict[str, Any] | None = None,
) -> Callable[[Callable], Callable]:
    """A decorator adding one flag per field of the typed request ``model`` (a pydantic model):
    ``--eval-size 500``, ``--restore-best/--no-restore-best``, ``--milestones 1,2``. The help is
    the field's description, its choices and its default; a flag not given is None, so the
    request's own default applies (:func:`given` picks the given ones). ``fields`` picks and
    orders the fields (default: all, less ``skip``); ``flags`` renames a flag (``{"enabled":
    "cka"}``); ``prefix`` is put before each parameter name (for a nested request); ``defaults``
    are the command's own defaults where it deliberately differs from the request."""
    names = list(fields) if fields is not None else [n for n in model.model_fields if n not in set(skip)]
    renamed, own = flags or {}, defaults or {}

    def decorate(fn: Callable) -> Callable:
        for name in reversed(names):
            f = model.model_fields[name]
            flag = "--" + renamed.get(name, name).replace("_", "-")
            dest = prefix + name
            default = own.get(name, f.default)
            help_ = f.description or ""
            if _choices(f.annotation):
                help_ += f"; one of: {', '.join(_choices(f.annotation))}"
            if default is not None and not _is_list(f.annotation):
                help_ += f" [default: {default}]"
            value = own.get(name)
            if f.annotation is bool:
                no = "--no-" + renamed.get(name, name).replace("_", "-")
                fn = click.option(f"{flag}/{no}", dest, default=value, help=help_)(fn)
            elif _is_list(f.annotation):
                fn = click.option(flag, dest, default=value, metavar="A,B,...", help=help_ + " (comma-separated)")(fn)
            else:
                kind = _number_type(f.annotation)
                fn = click.option(flag, dest, type=kind, default=value, metavar="VALUE", help=help_)(fn)
        return fn

    return decorate


def given(kw: dict[str, Any], model: Any, fields: Iterable[str] | None = None, *, prefix: str = "") -> dict[str, Any]:
    """The fields of ``model`` given on the command line (by :func:`request_flags`' flags), as the
    request takes them: lists split at commas."""
    out: dict[str, Any] = {}
    for name in fields if fields is not None else model.model_fields:
        value = kw.get(prefix + name)
        if value is None:
            continue
        f = model.model_fields[name]
        out[name] = [v.strip() for v in value.split(",") if v.strip()] if _is_list(f.annotation) else value
    return out

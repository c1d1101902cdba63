"""The command line's shared click options, size parsing, logging and error policy."""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from bids2hf.bids.options import ScanOptions
from bids2hf.errors import Bids2HfError, one_line
from bids2hf.interrupts import (
    caused_by_ctrl_c,
    exit_interrupted,
    handling_ctrl_c,
    stop_if_interrupted,
)
from bids2hf.plan.config import Config, load_config
from bids2hf.plan.options import PlanOptions
from bids2hf.units import parse_size

if TYPE_CHECKING:
    from bids2hf.model.source import Source

__all__ = ["SIZE", "CommandGroup", "SizeType", "common", "engine_options", "input_options",
           "open_bids_dir", "publish_options", "source_option"]  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])


class SizeType(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()


def _setup_logging(quiet: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if not debug:
        logging.getLogger("bidsschematools").setLevel(logging.WARNING)


def _stack(func: F, options: Sequence[Callable[[Any], Any]]) -> F:
    """``func`` decorated by ``options``, listed in the order ``--help`` shows them."""
    for option in reversed(options):
        func = option(func)
    return func


class CommandGroup(click.Group):
    """The program's group of commands: ``-h`` as ``--help``; Ctrl-C while click reads the
    command line (or a command starts) ends as it does in a command: one line and exit 130, not
    click's "Aborted!" and exit 1."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
        settings.update(kwargs.pop("context_settings", None) or {})
        super().__init__(*args, context_settings=settings, **kwargs)

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:  # fmt: skip
        try:
            return super().make_context(info_name, args, parent, **extra)
        except KeyboardInterrupt:
            exit_interrupted()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            exit_interrupted()


def common(func: F) -> F:
    """--quiet/--debug and the error policy: one line and exit 2, tracebacks only with --debug."""

    @click.option(
        "--quiet", "-q", is_flag=True, help="No progress bar; print only errors and the result."
    )
    @click.option("--debug", is_flag=True, help="Verbose logging and full tracebacks.")
    @functools.wraps(func)
    def wrapper(*args: Any, quiet: bool, debug: bool, **kwargs: Any) -> Any:
        with handling_ctrl_c():
            return _run(func, debug, *args, quiet=quiet, **kwargs)

    return wrapper  # type: ignore[return-value]


def _run(func: Callable[..., Any], debug: bool, *args: Any, quiet: bool, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` under the error policy of :func:`common`."""
    try:
        _setup_logging(quiet, debug)
        result = func(*args, quiet=quiet, **kwargs)
        stop_if_interrupted()  # (a Ctrl-C dropped late: the output is complete, but asked to stop)
        return result
    except click.exceptions.Exit:
        raise
    except (KeyboardInterrupt, Exception) as exc:
        if caused_by_ctrl_c(exc):  # (or an error of a clean-up cut short by it)
            if debug:  # (the group above would make it the one line: the traceback first)
                traceback.print_exc()
            exit_interrupted()
        if debug:
            raise
        if isinstance(exc, Bids2HfError):
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        click.echo(
            one_line(f"internal error: {type(exc).__name__}: {exc}")
            + " (re-run with --debug for details)",
            err=True,
        )
        sys.exit(1)


# long because: a table of click options, one entry each, read top to bottom as --help lists them
def input_options(func: F) -> F:
    """Options that decide what is read and how it is laid out (shared by inspect and convert)."""
    options = [
        click.option(
            "--layout",
            type=click.Choice(["session", "scan"]),
            default="session",
            show_default=True,
            help="One row per subject x session, or one row per image file.",
        ),
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False),
            help="TOML config: rename, select, group, split columns.",
        ),
        click.option(
            "--derivatives",
            multiple=True,
            metavar="NAME",
            help="Derivative pipeline under derivatives/ to join as columns ('all' for every one). Repeatable.",
        ),
        click.option(
            "--include",
            multiple=True,
            type=click.Choice(["sourcedata"]),
            help="Also store sourcedata/ (left out by default).",
        ),
        click.option(
            "--exclude",
            multiple=True,
            metavar="GLOB",
            help="Leave out matching paths (listed in the manifest). Repeatable.",
        ),
        click.option(
            "--on-invalid",
            type=click.Choice(["error", "skip", "keep"]),
            default="error",
            show_default=True,
            help="Files with invalid BIDS names: stop, leave out, or keep verbatim.",
        ),
        click.option(
            "--check",
            type=click.Choice(["none", "header", "full"]),
            default="header",
            show_default=True,
            help="NIfTI integrity check: header + gzip trailer, or full decompression.",
        ),
        click.option(
            "--max-shard-size",
            type=SIZE,
            default="500MB",
            show_default=True,
            help="Target Parquet shard size.",
        ),
        click.option(
            "--row-group-size",
            type=SIZE,
            default="128MiB",
            show_default=True,
            help="Row group size (memory per worker).",
        ),
        click.option(
            "--max-row-size",
            type=SIZE,
            default="128MiB",
            show_default=True,
            help="Most NIfTI bytes one row embeds (at most 2047MiB); files beyond it are "
            "stored beside the shards in files/. Bounds memory per worker: about 3x this.",
        ),
        click.option("--split", default="train", show_default=True, help="Split name of the rows."),
    ]
    return _stack(func, options)


# -- [issue 15] ------------------------------------------------------------------------------
def source_option(func: F) -> F:
    """--source-anon: how a BIDS_DIR given as a URL is read."""
    return click.option(
        "--source-anon",
        is_flag=True,
        help="Read an s3:// BIDS_DIR anonymously (public buckets such as s3://openneuro.org). "
        "Default: anonymous only when the AWS configuration holds no credentials.",
    )(func)


def open_bids_dir(bids_dir: str, anon: bool) -> Source:
    """The BIDS_DIR to read: a local folder, or an fsspec URL read in place.

    Raises:
        InputError: the URL's protocol is not available, or the AWS configuration is broken.
    """
    # Imported here: `bids2hf --help` loads no source module (nor fsspec).
    from bids2hf.bids.source import open_source

    return open_source(bids_dir, anon=True if anon else None)


def previews_option(func: F) -> F:
    """[issue 13] --previews N, shared by inspect and convert."""
    return click.option(
        "--previews",
        type=click.IntRange(min=0),
        default=None,
        metavar="N",
        help="Rows of the `previews` config (thumbnails the Hub's viewer shows) at most; "
        "0: no previews and no card pictures. Default: as many as 0.5% of the data's size "
        "allows (at least the first row).",
    )(func)


def publish_options(func: F) -> F:
    """Options of remote destinations, shared by convert and push."""
    options = [
        click.option("--private", is_flag=True, help="Create the Hub repository as private."),
        click.option(
            "--commit-every",
            type=click.IntRange(min=1),
            default=100,
            show_default=True,
            help="Data shards per commit (the card and manifest always come last).",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            help="Print what would be uploaded and deleted; change nothing.",
        ),
        click.option(
            "--timeout",
            type=float,
            default=300.0,
            show_default=True,
            help="Seconds a request may wait for each read or write (0: no limit).",
        ),
    ]
    return _stack(func, options)


def engine_options(func: F) -> F:
    """[issue 14] --engine and --scheduler: who writes the shards."""
    options = [
        click.option(
            "--engine",
            type=click.Choice(["local", "dask"]),
            default="local",
            show_default=True,
            help="Who writes the shards: processes on this machine (--workers), or tasks on a "
            "Dask cluster (--scheduler; pip install 'bids2hf[dask]').",
        ),
        click.option(
            "--scheduler",
            metavar="ADDRESS",
            help="With --engine dask: the scheduler's address (tcp://HOST:8786), its scheduler "
            "file (*.json), or local:N to start N worker processes here [default: "
            "local:<workers>].",
        ),
    ]
    return _stack(func, options)


def _options(kw: dict[str, Any]) -> tuple[ScanOptions, PlanOptions]:
    config = load_config(kw.pop("config_path")) if kw.get("config_path") else Config()
    kw.pop("config_path", None)
    scan_options = ScanOptions(
        derivatives=tuple(kw.pop("derivatives")),
        include_sourcedata="sourcedata" in kw.pop("include"),
        exclude=tuple(kw.pop("exclude")),
        on_invalid=kw.pop("on_invalid"),
        check=kw.pop("check"),
    )
    plan_options = PlanOptions(
        layout=kw.pop("layout"),
        max_shard_bytes=kw.pop("max_shard_size"),
        row_group_bytes=kw.pop("row_group_size"),
        max_row_bytes=kw.pop("max_row_size"),
        split=kw.pop("split"),
        config=config,
    )
    return scan_options, plan_options

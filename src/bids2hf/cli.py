"""The ``bids2hf`` command line: a thin layer over the Python API."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .config import Config, load_config
from .errors import Bids2HfError, one_line
from .plan import PlanOptions
from .scan import ScanOptions
from .units import human_bytes, parse_size

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("bids2hf")


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


def common(func: F) -> F:
    """--quiet/--debug and the error policy: one line and exit 2, tracebacks only with --debug."""

    @click.option(
        "--quiet", "-q", is_flag=True, help="No progress bar; print only errors and the result."
    )
    @click.option("--debug", is_flag=True, help="Verbose logging and full tracebacks.")
    @functools.wraps(func)
    def wrapper(*args: Any, quiet: bool, debug: bool, **kwargs: Any) -> Any:
        _setup_logging(quiet, debug)
        try:
            return func(*args, quiet=quiet, **kwargs)
        except Bids2HfError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("interrupted: re-run the same command to resume", err=True)
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception as exc:
            if debug:
                raise
            click.echo(
                one_line(f"internal error: {type(exc).__name__}: {exc}")
                + " (re-run with --debug for details)",
                err=True,
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


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
        click.option("--split", default="train", show_default=True, help="Split name of the rows."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


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
    for option in reversed(options):
        func = option(func)
    return func


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
        split=kw.pop("split"),
        config=config,
    )
    return scan_options, plan_options


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bids2hf")
def main() -> None:
    """Turn BIDS datasets into Hugging Face datasets (Parquet with embedded NIfTI), and back."""


@main.command()
@click.argument("bids_dir", type=click.Path())
@input_options
@click.option(
    "--all", "all_problems", is_flag=True, help="List every problem, not only the first 20."
)
@common
def inspect(bids_dir: str, all_problems: bool, quiet: bool, **kw: Any) -> None:
    """Show what convert would write and every problem found, writing nothing.

    Exit code 2 when convert would refuse the input.
    """
    from .conversion import scan_and_plan
    from .report import inspect_text

    scan_options, plan_options = _options(kw)
    inventory, plan = scan_and_plan(bids_dir, scan_options, plan_options)
    click.echo(inspect_text(inventory, plan, all_problems))
    if plan.errors:
        sys.exit(2)


@main.command()
@click.argument("bids_dir", type=click.Path())
@click.argument("destination")
@input_options
@click.option(
    "--workers",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="Processes writing shards (default: cores).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a bids2hf output of another plan (only files bids2hf recorded writing), or on "
    "a remote, files in bids2hf's paths that no bids2hf record names.",
)
@click.option("--strict", is_flag=True, help="Fail if any file would be left out.")
@click.option(
    "--strict-privacy", is_flag=True, help="Fail if the privacy lint finds identifying metadata."
)
@publish_options
@click.option(
    "--staging",
    type=click.Path(file_okay=False),
    help="Local folder for shards awaiting upload (remote destinations).",
)
@click.option(
    "--max-staged",
    type=click.IntRange(min=1),
    help="Shards on local disk at most while uploading (default: 2 x workers).",
)
@common
def convert(
    bids_dir: str,
    destination: str,
    quiet: bool,
    workers: int | None,
    overwrite: bool,
    strict: bool,
    strict_privacy: bool,
    private: bool,
    commit_every: int,
    dry_run: bool,
    timeout: float,
    staging: str | None,
    max_staged: int | None,
    **kw: Any,
) -> None:
    """Convert BIDS_DIR into a Hugging Face dataset at DESTINATION.

    DESTINATION is a local folder, hf://datasets/ORG/NAME[@REVISION] (converted and uploaded in
    one streaming pass), or an fsspec URL such as s3://bucket/prefix.
    """
    from .conversion import PublishOptions
    from .conversion import convert as run
    from .report import convert_summary

    scan_options, plan_options = _options(kw)
    publish = PublishOptions(
        private=private,
        staging=Path(staging) if staging else None,
        max_staged=max_staged,
        commit_every=commit_every,
        dry_run=dry_run,
        timeout=timeout or None,
    )
    report = run(
        bids_dir,
        destination,
        scan_options=scan_options,
        plan_options=plan_options,
        workers=workers,
        overwrite=overwrite,
        strict=strict,
        strict_privacy=strict_privacy,
        progress=not quiet,
        publish=publish,
    )
    if report.publish is not None and report.publish.dry_run:
        click.echo(report.publish.text())
        return
    click.echo(convert_summary(report))
    if report.replaced:
        click.echo(
            f"replaced {len(report.replaced)} file(s) of the earlier bids2hf output; "
            "files bids2hf did not write were kept"
        )
    if report.publish is not None:
        click.echo(report.publish.text())


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("destination")
@publish_options
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace remote files in bids2hf's paths that no bids2hf record names.",
)
@common
def push(
    folder: str,
    destination: str,
    quiet: bool,
    private: bool,
    commit_every: int,
    dry_run: bool,
    timeout: float,
    overwrite: bool,
) -> None:
    """Upload an already converted FOLDER to DESTINATION (hf://datasets/ORG/NAME or a URL)."""
    from .publish import push as run

    report = run(
        folder,
        destination,
        private=private,
        commit_every=commit_every,
        dry_run=dry_run,
        timeout=timeout or None,
        progress=not quiet,
        overwrite=overwrite,
    )
    click.echo(report.text())


@main.command()
@click.argument("directory", type=click.Path(), default="bids2hf-demo")
@click.option("--subjects", type=click.IntRange(min=1), default=4, show_default=True)
@common
def demo(directory: str, subjects: int, quiet: bool) -> None:
    """Generate a small synthetic BIDS dataset in DIRECTORY/bids and convert it to DIRECTORY/hf.

    DIRECTORY must be new or empty: the demo never deletes or replaces anything.
    """
    from .conversion import convert as run
    from .errors import DestinationError
    from .report import convert_summary
    from .synthetic import SyntheticSpec, generate_bids

    root = Path(directory)
    # Refuse any non-empty folder rather than clean it: what is in it may be the user's own work
    # (a real `bids` folder was once deleted here), and an earlier demo is theirs to remove.
    if root.exists() or root.is_symlink():
        if not root.is_dir():
            raise DestinationError(f"{root}: not a folder; give a new or empty folder for the demo")
        try:
            empty = not any(root.iterdir())
        except OSError as exc:
            raise DestinationError(f"{root}: cannot be listed ({exc.strerror or exc})") from None
        if not empty:
            raise DestinationError(
                f"{root}: not empty (an earlier demo?); the demo only writes into a new or empty "
                "folder and never deletes: give another folder, or remove this one yourself"
            )
    bids = root / "bids"
    try:
        generated = generate_bids(bids, SyntheticSpec(n_subjects=subjects))
    except FileExistsError:  # created by someone else since the check above
        raise DestinationError(f"{bids}: not empty; give a new or empty folder") from None
    click.echo(
        f"generated {len(generated.files)} files ({generated.total_bytes / 1e6:.1f} MB) in {bids}"
    )
    report = run(
        bids,
        root / "hf",
        scan_options=ScanOptions(derivatives=("all",)),
        progress=not quiet,
    )
    click.echo(convert_summary(report))
    click.echo(
        "\nload it with:\n"
        "  from datasets import load_dataset\n"
        f"  ds = load_dataset({str(root / 'hf')!r}, split='train')\n"
        "  img = ds[0]['anat_T1w'][0]   # a nibabel image\n"
        f"and rebuild the BIDS folder with:  bids2hf export {root / 'hf'} {root / 'bids-copy'}"
    )


@main.command()
@click.argument("source")
@click.argument("bids_out", type=click.Path())
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Only files whose BIDS path matches (e.g. 'sub-01*'). Repeatable.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Skip files whose BIDS path matches. Repeatable.",
)
@click.option("--overwrite", is_flag=True, help="Replace files that already exist in BIDS_OUT.")
@common
def export(
    source: str,
    bids_out: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    overwrite: bool,
    quiet: bool,
) -> None:
    """Rebuild the BIDS folder from SOURCE (output folder, hf://datasets/ORG/NAME[@REV], or URL)."""
    from .export_bids import export as run

    report = run(
        source, bids_out, include=include, exclude=exclude, overwrite=overwrite, progress=not quiet
    )
    click.echo(
        f"wrote {report.files} files ({human_bytes(report.bytes)}) to {report.output}, each checked against its sha256"
    )
    if report.skipped:
        click.echo(
            f"{len(report.skipped)} file(s) were left out at conversion time (listed in bids2hf/manifest.jsonl)"
        )


@main.command()
@click.argument("bids_dir", type=click.Path())
@click.argument("source")
@common
def verify(bids_dir: str, source: str, quiet: bool) -> None:
    """Compare BIDS_DIR with the published dataset SOURCE, file by file (exit 1 if they differ)."""
    from .verification import verify as run

    report = run(bids_dir, source, progress=not quiet)
    click.echo(report.text())
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()

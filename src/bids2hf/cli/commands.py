"""The ``bids2hf`` command line: a thin layer over the Python API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bids2hf._version import __version__
from bids2hf.bids.options import ScanOptions
from bids2hf.cli.engine import engine_client
from bids2hf.cli.options import (
    CommandGroup,
    _options,
    common,
    engine_options,
    input_options,
    open_bids_dir,
    previews_option,
    publish_options,
    source_option,
)
from bids2hf.errors import DestinationError, InputError
from bids2hf.units import human_bytes

if TYPE_CHECKING:  # the API loads pyarrow and more: `bids2hf --help` stays quick
    from bids2hf.api import ConvertReport

__all__ = ["convert", "demo", "export", "inspect", "main", "mount", "push",
           "verify"]  # fmt: skip


@click.group(cls=CommandGroup)
@click.version_option(__version__, prog_name="bids2hf")
def main() -> None:
    """Turn BIDS datasets into Hugging Face datasets (Parquet with embedded NIfTI), and back."""


@main.command()
@click.argument("bids_dir", type=click.Path())
@input_options
@source_option
@click.option(
    "--all", "all_problems", is_flag=True, help="List every problem, not only the first 20."
)
@previews_option
@common
def inspect(
    bids_dir: str,
    all_problems: bool,
    quiet: bool,
    source_anon: bool,
    previews: int | None,
    **kw: Any,
) -> None:
    """Show what convert would write and every problem found, writing nothing.

    Exit code 2 when convert would refuse the input.
    """
    from bids2hf.api import scan_and_plan
    from bids2hf.plan.previews import plan_previews
    from bids2hf.report.summaries import inspect_text, previews_text

    scan_options, plan_options = _options(kw)
    source = open_bids_dir(bids_dir, source_anon)  # [issue 15]
    inventory, plan = scan_and_plan(source, scan_options, plan_options)
    rows = [row for shard in plan.shards for row in shard.rows]
    choice = plan_previews(rows, plan.columns, plan.embedded_bytes, previews)
    click.echo(inspect_text(inventory, plan, all_problems, previews_text(choice)))
    if plan.errors:
        sys.exit(2)


@main.command()
@click.argument("bids_dir", type=click.Path())
@click.argument("destination")
@input_options
@source_option
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
@engine_options  # [issue 14]
@previews_option
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
    source_anon: bool,
    engine: str,
    scheduler: str | None,
    previews: int | None,
    **kw: Any,
) -> None:
    """Convert BIDS_DIR into a Hugging Face dataset at DESTINATION.

    BIDS_DIR is a local folder or an fsspec URL read in place, never copied to local disk
    (s3://openneuro.org/ds004884). DESTINATION is a local folder, hf://datasets/ORG/NAME[@REVISION] (converted and uploaded in
    one streaming pass), or an fsspec URL such as s3://bucket/prefix.
    """
    from bids2hf.api import convert as run
    from bids2hf.publish.pipeline import PublishOptions

    scan_options, plan_options = _options(kw)
    publish = PublishOptions(
        private=private,
        staging=Path(staging) if staging else None,
        max_staged=max_staged,
        commit_every=commit_every,
        dry_run=dry_run,
        timeout=timeout or None,
    )
    with engine_client(engine, scheduler, workers) as client:  # [issue 14]
        report = run(
            open_bids_dir(bids_dir, source_anon),
            destination,
            scan_options=scan_options,
            plan_options=plan_options,
            workers=workers,
            overwrite=overwrite,
            strict=strict,
            strict_privacy=strict_privacy,
            progress=not quiet,
            publish=publish,
            client=client,
            previews=previews,
        )
    _print_convert_report(report)


def _print_convert_report(report: ConvertReport) -> None:
    """What convert did (or, with --dry-run, would do)."""
    if report.publish is not None and report.publish.dry_run:
        from bids2hf.report.summaries import previews_text

        click.echo(report.publish.text())
        click.echo(previews_text(report.previews))  # [issue 13]
        return
    click.echo(report.text())
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
    from bids2hf.api import push as run

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
    \f
    Raises:
        DestinationError: DIRECTORY is no folder, cannot be listed, or is not empty.
    """
    from bids2hf.api import convert as run
    from bids2hf.errors import DestinationError
    from bids2hf.testing.spec import SyntheticSpec
    from bids2hf.testing.synthetic import generate_bids

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
    click.echo(report.text())
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
    from bids2hf.readback.export import export as run

    report = run(
        source, bids_out, include=include, exclude=exclude, overwrite=overwrite, progress=not quiet
    )
    click.echo(
        f"wrote {report.files} files ({human_bytes(report.bytes)}) to {report.output}, each checked against its sha256"
    )
    if report.present:
        click.echo(f"{report.present} file(s) were there already, with their sha256: kept")
    if report.skipped:
        click.echo(
            f"{len(report.skipped)} file(s) were left out at conversion time (listed in bids2hf/manifest.jsonl)"
        )


@main.command()
@click.argument("bids_dir", type=click.Path())
@click.argument("source")
@source_option
@common
def verify(bids_dir: str, source: str, quiet: bool, source_anon: bool) -> None:
    """Compare BIDS_DIR (a folder or a URL) with the published dataset SOURCE, file by file
    (exit 1 if they differ)."""
    from bids2hf.readback.verify import verify as run

    report = run(open_bids_dir(bids_dir, source_anon), source, progress=not quiet)
    click.echo(report.text())
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("source")
@click.argument("mountpoint", type=click.Path())
@click.option(
    "--no-verify",
    is_flag=True,
    help="Do not check each file's sha256 on its first read (only for a source you trust).",
)
@common
def mount(source: str, mountpoint: str, no_verify: bool, quiet: bool) -> None:
    """Show the BIDS tree of SOURCE as a read-only folder at MOUNTPOINT (FUSE), until Ctrl-C.

    SOURCE is an output folder, hf://datasets/ORG/NAME[@REV] or an fsspec URL. Needs
    `pip install "bids2hf[mount]"` and libfuse 3 (Debian: fuse3). Each file's sha256 is checked
    on its first read: a damaged file reads as an I/O error, never as wrong bytes.
    """
    from bids2hf.readback.mount import mount as run

    # libfuse owns SIGINT/SIGTERM while mounted: it unmounts and `run` returns normally.
    run(source, mountpoint, verify=not no_verify)


@main.command()
@click.argument("out_dir", type=click.Path())
@click.option(
    "--bids",
    "bids_dir",
    type=click.Path(),
    help="The BIDS folder OUT_DIR was converted from: the report then lists every problem and "
    "reads the image headers.",
)
@source_option
@common
def report(out_dir: str, bids_dir: str | None, quiet: bool, source_anon: bool) -> None:
    """Write a static HTML report of the converted dataset OUT_DIR to OUT_DIR/report/index.html
    (no script; pictures under OUT_DIR/report/images/; never published).
    \f
    Raises:
        InputError: OUT_DIR is a URL (exit 2).
        DestinationError: OUT_DIR is not a converted dataset, or OUT_DIR/report/index.html is
            a file bids2hf did not write (exit 2, nothing overwritten).
    """
    from bids2hf.api import scan_and_plan
    from bids2hf.report.html_report import write_report
    from bids2hf.report.report_page import REPORT_DIR, report_data

    if "://" in out_dir:  # Path() would turn hf://datasets/... into hf:/datasets/...
        raise InputError(f"{out_dir}: report reads a local output folder, not a URL; give the "
                         "folder `bids2hf convert BIDS_DIR OUT_DIR` wrote")
    out = Path(out_dir)
    inventory = plan = None
    if bids_dir is not None:
        inventory, plan = scan_and_plan(open_bids_dir(bids_dir, source_anon))
    try:
        data = report_data(out, inventory, plan)
        page = write_report(out / REPORT_DIR, data)
    except (FileNotFoundError, FileExistsError) as exc:
        raise DestinationError(str(exc)) from None
    click.echo(page.resolve().as_uri())


if __name__ == "__main__":  # pragma: no cover
    main()

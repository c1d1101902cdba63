"""What the steps of one conversion share: the report it fills and the run's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from bids2hf.bids.source import source_of
from bids2hf.model.inventory import Inventory, Problem, Severity
from bids2hf.model.source import Source
from bids2hf.model.state import ResumeState
from bids2hf.plan.plan import ConversionPlan
from bids2hf.plan.previews import PreviewChoice
from bids2hf.publish.pipeline import (
    PublishOptions,
    RemoteRun,
)
from bids2hf.publish.uploader import PublishReport
from bids2hf.report.summaries import convert_summary
from bids2hf.write.engine import ShardEngine
from bids2hf.write.output_folder import OutputFolder
from bids2hf.write.previews_output import (
    PreviewsWritten,
)

__all__ = ["ConversionRun", "ConvertReport", "staged_bound"]


@dataclass
class ConvertReport:
    """What a conversion did, for the summary and for callers."""

    output: str
    plan: ConversionPlan
    inventory: Inventory
    written: list[str] = field(default_factory=list)  # shards written by this run
    reused: list[str] = field(default_factory=list)  # complete shards found from an earlier run
    removed: list[str] = field(default_factory=list)  # stale shards deleted
    replaced: list[str] = field(default_factory=list)  # another plan's files (--overwrite)
    seconds: float = 0.0
    bytes_read: int = 0
    publish: PublishReport | None = None
    previews: PreviewChoice | None = None  # [issue 13] the thumbnails chosen (None: off)

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.plan.problems if p.severity is Severity.WARNING]

    def text(self) -> str:
        """One screen about the finished conversion."""
        return convert_summary(
            self.output,
            self.plan,
            written=len(self.written),
            reused=len(self.reused),
            removed=len(self.removed),
            seconds=self.seconds,
            bytes_read=self.bytes_read,
            warnings=self.warnings,
        )


# -- the verb ------------------------------------------------------------------------------


@dataclass
class ConversionRun:
    """What the steps of one conversion share (while the folder's lock is held)."""

    out: OutputFolder
    report: ConvertReport
    remote_url: str | None
    publish: PublishOptions
    workers: int
    overwrite: bool
    progress: bool
    repo_hint: str
    engine: ShardEngine  # [issue 14] who writes the shards
    remote: RemoteRun | None = None
    previews: PreviewsWritten | None = None  # [issue 13] once written, for the card

    @property
    def plan(self) -> ConversionPlan:
        return self.report.plan

    @property
    def from_workers(self) -> bool:
        """[issue 14] Workers put the shards on the remote themselves: none on this disk."""
        return self.remote is not None and self.engine.uploads

    @property
    def state(self) -> ResumeState:
        return self.out.store.state  # empty when there was none; kept up to date by the store

    @property
    def source(self) -> Source:
        """[issue 15] Where the files are read (inventories built in memory have only a root)."""
        inventory = self.report.inventory
        return source_of(inventory.root, inventory.source)


def staged_bound(run: ConversionRun) -> int:
    return run.publish.max_staged or 2 * run.workers

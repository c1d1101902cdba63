"""One conversion in this process, for the previews A/B: off, thumbnails on a thread (as
shipped) or inline on the writer's own thread. Prints one JSON line (wall and CPU seconds).

    python benchmarks/bench_previews_ab.py BIDS MODE ROWS OUT   # MODE: off|thread|inline,
                                                                # ROWS: N or "default"

benchmarks/results/PREVIEWS-1G.md ran it round-robin over the modes, 3 rounds, dropping the page
cache and re-reading the libraries before each run (``sync; echo 3 > /proc/sys/vm/drop_caches;
python -c 'import bids2hf.cli, pyarrow, nibabel, PIL, numpy'``), on bench_convert.py's 1G data.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import bids2hf
import bids2hf.write.previews as wp
import bids2hf.write.shard as sh
from bids2hf.model.rows import FileRef


class Inline(wp.ThumbnailJobs):
    """The same thumbnails, made on the writer's thread as each row group is read."""

    def submit(self, items: Sequence[tuple[FileRef, memoryview]]) -> None:
        for ref, view in items:
            if ref.relpath in self.wanted and ref.relpath not in self.results:
                self.results[ref.relpath] = wp.make_thumbnail(view, ref.relpath)


def main() -> None:
    bids, mode, rows, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    if mode == "inline":
        sh.ThumbnailJobs = Inline  # type: ignore[misc]
    previews = None if rows == "default" else int(rows)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    report = bids2hf.convert(bids, out, workers=1, progress=False, previews=previews)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    n = len(report.previews.files) if report.previews else 0
    print(json.dumps({"mode": mode, "rows": rows, "wall": wall, "cpu": cpu, "thumbnails": n}))


if __name__ == "__main__":
    main()

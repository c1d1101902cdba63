"""One conversion in this process: previews off, on a thread (as shipped), or inline."""
import json, resource, sys, time
from pathlib import Path

import bids2hf
import bids2hf.write.previews as wp
import bids2hf.write.shard as sh

bids, mode, rows, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
if mode == "inline":
    class Inline(wp.ThumbnailJobs):
        def submit(self, items):  # the same work, on the writer's own thread
            for ref, view in items:
                if ref.relpath in self.wanted and ref.relpath not in self.results:
                    self.results[ref.relpath] = wp.make_thumbnail(view, ref.relpath)
    sh.ThumbnailJobs = Inline
previews = None if rows == "default" else int(rows)
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
report = bids2hf.convert(bids, out, workers=1, progress=False, previews=previews,
                         scan_options=None)
wall = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
n = len(report.previews.files) if report.previews else 0
print(json.dumps({"mode": mode, "rows": rows, "wall": wall, "cpu": cpu, "thumbnails": n}))

"""What a load reports when it ends: per file and in total, the lines read, readings
and messages produced, lines skipped per reason, and where a stopped file resumes.

Apart from the producing loop because it is plain data and text (the JSON log line and
the summary printed for a human), made once at the end whatever happened.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.backfill.lines import Position


@dataclass
class FileResult:
    path: Path
    state: str  #: complete, already_loaded, stopped, failed
    start: Position
    end: Position
    counts: Counter[str]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "state": self.state,
                "resumed_from_line": self.start.line, "line": self.end.line,
                "offset": self.end.offset, **_counts(self.counts),
                "seconds": round(self.seconds, 3)}


def _counts(counts: Counter[str]) -> dict[str, Any]:
    skipped = {k.split(":", 1)[1]: v for k, v in sorted(counts.items())
               if k.startswith("skipped:") and v}
    return {"lines_read": counts["lines_read"], "records": counts["records"],
            "readings": counts["readings"], "messages": counts["messages"],
            "skipped": skipped, "skipped_total": sum(skipped.values())}


@dataclass
class Summary:
    topic: str
    partitions: int
    results: list[FileResult]
    not_started: list[Path]
    seconds: float
    stopped_by: str | None = None
    error: str | None = None

    def totals(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for result in self.results:
            total.update(result.counts)
        return total

    def as_dict(self) -> dict[str, Any]:
        total = self.totals()
        return {"topic": self.topic, "partitions": self.partitions, **_counts(total),
                "seconds": round(self.seconds, 3),
                "lines_per_s": round(total["lines_read"] / max(self.seconds, 1e-9), 1),
                "stopped_by": self.stopped_by, "error": self.error,
                "files": [r.as_dict() for r in self.results],
                "not_started": [str(p) for p in self.not_started]}

    def text(self) -> str:
        """The summary for a human."""
        out = [f"load into {self.topic!r} ({self.partitions} partitions):"]
        for r in self.results:
            if r.state == "already_loaded":
                out.append(f"  {r.path}: already loaded (its checkpoint says complete); "
                           "--restart loads it again")
                continue
            first = r.start.line + 1
            out.append(f"  {r.path}: {r.state.replace('_', ' ')}, lines {first:,} to "
                       f"{r.end.line:,}")
            out.append("    " + _counts_text(r.counts))
        for path in self.not_started:
            out.append(f"  {path}: not started")
        total = self.totals()
        rate = total["lines_read"] / max(self.seconds, 1e-9)
        out.append(f"  total: {_counts_text(total)}; {self.seconds:.1f} s, {rate:,.0f} lines/s")
        stopped = [r for r in self.results if r.state in ("stopped", "failed")]
        if self.stopped_by or stopped:
            for r in stopped:
                out.append(f"{'stopped by ' + self.stopped_by if self.stopped_by else 'stopped'}"
                           f": {r.path} is loaded up to line {r.end.line:,} (byte "
                           f"{r.end.offset:,}), every line before it acknowledged by the "
                           f"broker. Run the same command again to resume at line "
                           f"{r.end.line + 1:,}.")
        if self.error:
            out.append(f"error: {self.error}")
        return "\n".join(out)


def _counts_text(counts: Counter[str]) -> str:
    c = _counts(counts)
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in c["skipped"].items())
    return (f"lines read {c['lines_read']:,}, readings produced {c['readings']:,}, "
            f"messages {c['messages']:,}, lines skipped {c['skipped_total']:,}"
            + (f" ({reasons})" if reasons else ""))

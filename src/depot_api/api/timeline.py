"""A build's steps on a timeline: where each step's bar begins and how wide it is, in percent of
the span from the first step's start to the last step's end (a running step's end is now).

The pages draw each bar as a small inline SVG whose rect takes these numbers as its x and
width attributes: the Content-Security-Policy forbids inline style attributes, and SVG
presentation attributes are not styles.
"""

from __future__ import annotations

from dataclasses import dataclass

from depot_api.domain.insights import BuildView
from depot_api.models import BuildStatus, BuildStep

# The narrowest bar drawn, in percent: a step of no measurable time still shows as a tick.
MIN_WIDTH = 0.5


@dataclass(frozen=True, slots=True)
class Bar:
    # Both in percent of the timeline's span, rounded for the markup.
    offset: float
    width: float
    # The step has started and not completed: while the build runs, its bar ends now.
    running: bool
    # Seconds the step ran (so far, for a running one).
    seconds: float


@dataclass(frozen=True, slots=True)
class Timeline:
    # Seconds from the first step's start to the last step's end (0 without steps).
    span_seconds: float
    # Each step's bar by its digest; None for a step with no times (nothing to place).
    bars: dict[str, Bar | None]
    # The steps the build has not come to yet: no times, no output, no cache hit, no error,
    # and the build still running. (A step with no times that did any of these ran, but
    # its reporter sent no times: it is shown without a bar, not as waiting.)
    waiting: frozenset[str] = frozenset()

    @property
    def placed(self) -> bool:
        return any(bar is not None for bar in self.bars.values())


def timeline_of(view: BuildView) -> Timeline:
    build = view.build
    running = build.status is BuildStatus.RUNNING
    # A step that never completed ends now while the build runs, else where the build ended.
    open_end = view.now_us if running or build.finished_us is None else build.finished_us
    spans: dict[str, tuple[int, int, bool] | None] = {}
    for shown in view.steps:
        spans[shown.step.digest] = _span(shown.step, open_end)
    waiting = frozenset(
        shown.step.digest
        for shown in view.steps
        if running
        and spans[shown.step.digest] is None
        and not (shown.step.cached or shown.step.error or shown.step.has_logs)
    )
    placed = [span for span in spans.values() if span is not None]
    if not placed:
        return Timeline(0.0, dict.fromkeys(spans), waiting)
    first = min(start for start, _, _ in placed)
    last = max(end for _, end, _ in placed)
    total = max(last - first, 1)
    bars: dict[str, Bar | None] = {}
    for digest, span in spans.items():
        if span is None:
            bars[digest] = None
            continue
        start, end, unfinished = span
        width = max((end - start) / total * 100, MIN_WIDTH)
        offset = min((start - first) / total * 100, 100 - width)
        bars[digest] = Bar(
            round(offset, 3), round(width, 3), unfinished and running, (end - start) / 1e6
        )
    return Timeline((last - first) / 1e6, bars, waiting)


def _span(step: BuildStep, open_end: int) -> tuple[int, int, bool] | None:
    """(start, end, unfinished) of a step in microseconds; None if it has not started."""
    if step.started_us is None:
        if step.completed_us is None:
            return None
        # Completed with no start (BuildKit may say so of a cached step): a tick.
        return step.completed_us, step.completed_us, False
    if step.completed_us is None:
        return step.started_us, max(open_end, step.started_us), True
    return step.started_us, max(step.completed_us, step.started_us), False

"""Analysis of stamped media: what was sent, stored and retrieved, and when; frame analysis
of long archives on Dask (``archive``); the demo's HTML report (``report``)."""

from kvsnb.analysis.archive import (
    ArchivePlan,
    FrameContext,
    TargetSpec,
    UserFunction,
    analyze_archive,
    analyze_local,
    frame_gaps,
    keyframe_intervals,
    local_client,
    plan_archive,
    to_dask,
)
from kvsnb.analysis.frame_timeline import frame_timeline, timeline_summary
from kvsnb.analysis.latency import fragment_latency, frame_latency, latency_summary
from kvsnb.analysis.plots import (
    plot_intervals,
    plot_latency_cdf,
    plot_latency_waterfall,
    plot_timeline,
)
from kvsnb.analysis.probe import ProbeRecord, RetrievalProbe
from kvsnb.analysis.report import report_html
from kvsnb.analysis.stamps import Delivery, compare_delivery, stamps_from_frames, stamps_from_images

__all__ = [
    "ArchivePlan",
    "Delivery",
    "FrameContext",
    "ProbeRecord",
    "RetrievalProbe",
    "TargetSpec",
    "UserFunction",
    "analyze_archive",
    "analyze_local",
    "compare_delivery",
    "fragment_latency",
    "frame_gaps",
    "frame_latency",
    "frame_timeline",
    "keyframe_intervals",
    "latency_summary",
    "local_client",
    "plan_archive",
    "plot_intervals",
    "plot_latency_cdf",
    "plot_latency_waterfall",
    "plot_timeline",
    "report_html",
    "stamps_from_frames",
    "stamps_from_images",
    "timeline_summary",
    "to_dask",
]

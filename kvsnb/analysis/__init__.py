"""Analysis of stamped media: what was sent, stored and retrieved, and when."""

from .latency import fragment_latency, frame_latency, latency_summary
from .plots import plot_intervals, plot_latency_cdf, plot_latency_waterfall, plot_timeline
from .probe import ProbeRecord, RetrievalProbe
from .stamps import Delivery, compare_delivery, stamps_from_frames, stamps_from_images
from .timeline import frame_timeline, timeline_summary

__all__ = [
    "Delivery",
    "ProbeRecord",
    "RetrievalProbe",
    "compare_delivery",
    "fragment_latency",
    "frame_latency",
    "frame_timeline",
    "latency_summary",
    "plot_intervals",
    "plot_latency_cdf",
    "plot_latency_waterfall",
    "plot_timeline",
    "stamps_from_frames",
    "stamps_from_images",
    "timeline_summary",
]

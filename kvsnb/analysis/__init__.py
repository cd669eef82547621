"""Analysis of stamped media: what was sent, stored and retrieved, and when."""

from .stamps import Delivery, compare_delivery, stamps_from_frames

__all__ = ["Delivery", "compare_delivery", "stamps_from_frames"]

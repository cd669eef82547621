"""``kinesis-video-archived-media``: the readers of stored fragments. ListFragments and
GetMediaForFragmentList (``plane``); HLS (``hls``) and DASH (``dash``), each composed of the
pure fragment selection (``selection``), the session registry (``sessions``) and the
segments (``segments``) they share; GetImages (``images``), GetClip (``clip``), and the
remuxer (``remux``).

Uses ``control`` (streams), ``store`` and ``core``; never ``storage``.
"""

"""``kinesis-video-archived-media``: the readers of stored fragments. ListFragments and
GetMediaForFragmentList (``plane``), HLS (``hls``) and DASH (``dash``) over the streaming
sessions they share (``streaming``), GetImages (``images``), GetClip (``clip``), and the
remuxer they share (``remux``).

Uses ``control`` (streams), ``store`` and ``core``; never ``storage``.
"""

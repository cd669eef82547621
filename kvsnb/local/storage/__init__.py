"""``kinesis-video-webrtc-storage``: JoinStorageSession and JoinStorageSessionAsViewer
(``plane``), the storage peers that answer them (``peer``, in-process or in ``workers``), the
passthrough receive path (``passthrough``), the relay to viewers and the audio mix
(``fanout``) and the recorder that writes fragments (``recorder``).

Uses ``signaling`` (client connections), ``control``, ``store`` and ``core``; never
``archive``.
"""

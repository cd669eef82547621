"""``kinesis-video-media``: PutMedia (MKV in, acknowledgement events out, fragments stored in
the fragment store exactly as WebRTC storage stores them) and GetMedia (the stream's chunks in
fragment-number order with AWS's tags, following the stream as it grows), in ``plane``.

Served at the ``/stream-media`` endpoint that GetDataEndpoint returns for ``PUT_MEDIA`` and
``GET_MEDIA``. Uses ``control`` (streams), ``store`` and ``core``; never ``storage`` or
``archive``.
"""

"""The recorder: a live stream from the worker's origin, written to storage.

``kubecast-worker record`` follows one rendition of the origin's HLS output and
copies its segments (never re-encoding) into an EVENT playlist that plays while
it grows; when the recording ends it remuxes the segments into one faststart
MP4 (and, on request, keeps a fragmented MP4 growing alongside).

Stages, in the order data flows:

- ``origin``    reads the source: master playlist, the chosen rendition, segments;
- ``tracking``  decides which source segments are new and where the gaps are;
- ``journal``   the recording on disk: segments, the event playlist, a state file;
- ``remux``     PyAV, in one thread: segments → MP4 / fragmented MP4;
- ``recorder``  the loop that ties them together (start, stop, idle, finalize);
- ``api``       the admin port: ``/status``, ``/stop`` (bearer token), ``/healthz``,
                ``/readyz``, ``/metrics``.
"""

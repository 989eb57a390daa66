"""The worker's RTMP ingest front: admits one publisher with the right key, hands on FLV.

Usage, from the worker's event loop::

    server = RtmpIngestServer(host="0.0.0.0", port=1935, app="live", stream_key=key,
                              on_publish=start_transcoding)
    await server.start()

where ``start_transcoding(session)`` typically runs ``av.open(session.flv, format="flv")``
in a worker thread. See ``server.py`` for what is refused and counted.
"""

from kubecast_worker.rtmp.pipe import FlvPipe
from kubecast_worker.rtmp.server import IngestCounters, RtmpIngestServer
from kubecast_worker.rtmp.session import PublishSession

__all__ = ["FlvPipe", "IngestCounters", "PublishSession", "RtmpIngestServer"]

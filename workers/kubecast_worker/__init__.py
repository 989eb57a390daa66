"""kubecast media workers: ingest, transcode ladder, HLS packager, origin, recorder."""

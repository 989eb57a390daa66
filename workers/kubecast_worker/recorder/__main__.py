"""``python -m kubecast_worker.recorder.cli`` and ``python -m kubecast_worker.recorder``."""

from kubecast_worker.recorder import cli

raise SystemExit(cli.main())

"""The kubecast API (group ``kubecast.dev``, version ``v1alpha1``).

These pydantic models are the single source of the API: the CRDs in ``crds/``
are generated from them (``make crds``), the Helm chart ships those files, the
operator validates with them, and the worker reads the config the operator
renders from them.
"""

from kubecast_api.common import API_VERSION, GROUP, VERSION, Condition, describe_error
from kubecast_api.livestream import LiveStream, LiveStreamSpec, LiveStreamStatus
from kubecast_api.profile import DEFAULT_LADDER, Rendition, TranscodeProfile, TranscodeProfileSpec
from kubecast_api.recording import Recording, RecordingSpec, RecordingStatus
from kubecast_api.resources import KINDS, parse_manifest
from kubecast_api.worker_config import (
    WorkerConfig,
    WorkerIngest,
    WorkerPull,
    WorkerRestreamTarget,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_LADDER",
    "GROUP",
    "KINDS",
    "VERSION",
    "Condition",
    "LiveStream",
    "LiveStreamSpec",
    "LiveStreamStatus",
    "Recording",
    "RecordingSpec",
    "RecordingStatus",
    "Rendition",
    "TranscodeProfile",
    "TranscodeProfileSpec",
    "WorkerConfig",
    "WorkerIngest",
    "WorkerPull",
    "WorkerRestreamTarget",
    "describe_error",
    "parse_manifest",
]

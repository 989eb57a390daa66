"""The kubecast operator: reconciles LiveStream, TranscodeProfile and Recording."""

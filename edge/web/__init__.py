"""``edgetl serve``: the model in a phone's browser (MediaPipe Tasks for the web)."""

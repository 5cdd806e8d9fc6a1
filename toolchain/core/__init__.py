"""Shared foundations of the workstation side: options, the run folder, reports, progress, the error contract, quiet TensorFlow."""

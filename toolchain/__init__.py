"""edgetl's workstation side: data, training, export, parity, and the CLI."""

__version__ = "0.1.0"

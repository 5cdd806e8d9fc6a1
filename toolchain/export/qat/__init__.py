"""`edgetl export --qat`: quantization-aware fine-tuning in a Python of its own, supervised."""

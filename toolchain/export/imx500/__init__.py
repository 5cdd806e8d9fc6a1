"""`edgetl export --target imx500`: the Raspberry Pi AI Camera (convert.py), and the
worker that runs Sony's chain in a venv of its own (worker.py)."""

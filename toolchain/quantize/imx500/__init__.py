"""Sony's IMX500 toolchain (MCT, imxconv-tf) in its own venv: process.py finds and runs worker.py."""

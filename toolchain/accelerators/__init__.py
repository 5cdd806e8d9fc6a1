"""Accelerator compilers as judges of an exported file: what runs on the accelerator."""

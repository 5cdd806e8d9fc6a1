"""Scores that mean what they say: calibration, the out-of-class answer, the answer floor."""

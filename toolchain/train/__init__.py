"""`edgetl train`: data in, a trained Keras model and its reports out (`command.py` reads top to bottom)."""

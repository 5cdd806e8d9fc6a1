"""`edgetl validate`: the TFLite model against Keras on the same held-out images, and the accuracy budget it is held to."""

"""Turning a Keras model into TFLite: converters per mode, INT8 calibration, the quantization debugger, mixed precision."""

"""Converters to the quantized model: int8 TFLite (from_tflite), float ONNX through the float
network and post-training quantization (from_onnx, floatnet, quantize)."""

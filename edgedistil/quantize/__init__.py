"""The quantize stage (onnx.py) and its parts. METHODS lives here so the CLI can list them without loading onnx."""

METHODS = ("int8", "int8_wo", "int8_storage", "int8_static", "int4", "fp16")

"""The quantize stage (onnx.py) and its parts. METHODS lives here so the CLI can list them without loading onnx."""

METHODS = ("int8", "int8_wo", "int8_storage", "int8_static", "int4", "fp16")
# the precision whose fidelity floors (fidelity.FLOORS) each method's output is held to
PRECISION = {"int8": "int8", "int8_wo": "int8", "int8_storage": "int8", "int8_static": "int8", "int4": "int4",
             "fp16": "fp16"}

"""Graph tools shared by the kinds that build on an ONNX file: saving, FP16/INT8 conversion,
ONNX Runtime fusions, and per-node error reports. Imports no framework at module level."""

"""PyTorch-side tools the torch-based kinds share (PT2E INT8 quantization). Imports no framework at module level."""

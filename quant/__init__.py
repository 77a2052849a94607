"""Quantizers for exported models (llama.cpp, ONNX Runtime) and their quality checks. Imported as `hslm.quant`."""

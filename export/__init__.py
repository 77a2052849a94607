"""Writers that turn an hslm model into other formats (Hugging Face, GGUF, ONNX). Imported as `hslm.export`."""

"""edgeslim.convert: Hugging Face / GGUF models in, edgeslim GGUF out (uses torch)."""

"""edgeslim.convert: Hugging Face / GGUF models in, edgeslim GGUF out.

Everything that knows Hugging Face names lives here. Converting needs numpy,
gguf, sentencepiece and tokenizers (torch and transformers only for the tests
and hub downloads need huggingface_hub).
"""

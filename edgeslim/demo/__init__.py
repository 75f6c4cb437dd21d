"""The bundled demo model: a tiny trained Llama story model in Hugging Face format.

`DEMO_DIR` holds config.json, model.safetensors (fp16), tokenizer.model,
tokenizer.json, tokenizer_config.json, special_tokens_map.json,
generation_config.json and a README.md saying how `scripts/train_demo_model.py`
made it.
"""
from pathlib import Path

DEMO_DIR = Path(__file__).parent

__all__ = ["DEMO_DIR"]

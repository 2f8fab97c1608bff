"""lowbit: quantize Hugging Face LLMs to 2–4 bits and ship them to every device."""

__version__ = "0.1.0"

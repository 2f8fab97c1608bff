"""lowbit: quantize Hugging Face LLMs to 2–4 bits and ship them to every device."""

import os

# Every model, tokenizer and data file lowbit reads is local: a missing file must be an error,
# never a download from (or a minutes-long wait for) the Hugging Face Hub. Set before any
# huggingface_hub / transformers import, which read these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

__version__ = "0.1.0"

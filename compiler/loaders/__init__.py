"""Per-family maps from HF / fused tensor names to MLC-LLM parameter names and fusions."""

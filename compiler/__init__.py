"""The compiler side: MLC-LLM quantization schemes and weight format, models, kernels."""

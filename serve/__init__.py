"""``lowbit serve``: an OpenAI-compatible REST server over the runtime's continuous batching.

Like the runtime, it needs neither torch nor the TVM compiler.
"""

"""The runtime: run a compiled model on an MLC weight folder with only the TVM runtime.

Nothing here imports torch, transformers or the TVM compiler (``tvm.relax``), so the engine runs
on a deployment machine that has ``apache-tvm`` (runtime-only mode), ``tokenizers`` and NumPy.
"""

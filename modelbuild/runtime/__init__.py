"""The runtime side: what running a built variant needs (docs/spec/runtime.md).

So far: :mod:`modelbuild.runtime.memory`, the memory a variant needs to serve at a given
context length, from the weights' bytes and the attention shape (config.json or GGUF keys).
"""

"""Reading GGUF files the way llama.cpp's loader does: header reader, per-arch hparams,
sparse-attention metadata, and the inspector that turns a file into a `GGUFInfo`.
"""

"""Data: TFDS builders, the sentencepiece tokenizer and fixed-shape batches.

Modules are imported directly (`ttscale.data.tokenizer`, ...) so that using
the tokenizer or batching does not pay for importing TFDS.
"""

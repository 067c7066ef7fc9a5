"""The text stage: corpora (built-in or files) -> tokenizers -> train / validation / test splits -> batches for
truncated backpropagation through time.
"""

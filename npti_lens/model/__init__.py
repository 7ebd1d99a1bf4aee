"""A TransformerLens model: loading (HF folders, GGUF, the organism), `ModelFacts`, MLP hook sites per family, and the batched decode loop (the reference engine)."""

"""AnnData in, model-ready tensors out: datasets, preprocessing, tokenization, TF prior."""

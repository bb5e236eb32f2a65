"""The input layer: turning what users pass (tensors, arrays, files, loaders) into validated
rows of logits and labels, read in chunks."""

"""The objectives: the negative log-likelihoods the calibrators minimise, streamed over row
chunks."""

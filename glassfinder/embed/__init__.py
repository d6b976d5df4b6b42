"""Embedding: aligned eye-band crops, the metric-learned CNN, training, batched inference, evaluation."""

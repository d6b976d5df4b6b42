"""Training the face-analysis model: render shards, fit, presence head, verifier, packaging."""

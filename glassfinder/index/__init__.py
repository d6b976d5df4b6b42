"""FAISS index: build from feature shards, versioned publish with a quality gate, readers."""

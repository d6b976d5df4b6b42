"""The eyewear catalogue: asset convention, procedural sample frames, manifests, ingestion."""

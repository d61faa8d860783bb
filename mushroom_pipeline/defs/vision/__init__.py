"""Camera images: the manifest, CLIP embeddings, their check, nightly schedule and new-images sensor."""

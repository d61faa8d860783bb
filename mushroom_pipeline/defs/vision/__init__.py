"""Camera images: the manifest, CLIP embeddings, their check, nightly schedule and new-images sensor."""

# Who answers for this domain's tables, and the tags every asset of it carries (filterable in the UI).
OWNERS = ["team:farm-vision"]
TAGS = {"domain": "vision"}

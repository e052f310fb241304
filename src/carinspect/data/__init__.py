"""Image decoding and validation, data sources, the manifest, the torch Dataset, preprocessing."""

"""carinspect: labelled vehicle photos in, a served and versioned image classifier out."""

"""Bytes to pixels: decoding within a memory bound, integrity checks, content fingerprints."""

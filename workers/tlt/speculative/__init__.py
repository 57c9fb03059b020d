"""Speculative decoding: draft trees, lossless acceptance, n-gram drafting, adaptive control."""

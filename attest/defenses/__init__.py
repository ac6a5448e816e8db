"""Defenses whose parameters and effects the card records: DP-SGD and watermarking."""

"""laminate: hardware-attested ML property cards."""

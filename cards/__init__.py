"""The laminated card: schema, deterministic CBOR, COSE_Sign1 sealing and views."""

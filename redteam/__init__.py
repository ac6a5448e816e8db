"""The red team: thieves, independent models and false accusers, and the ownership
evaluation that runs them against the same verifier and dispute rule an arbiter uses."""

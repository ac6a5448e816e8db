"""Appraisal of cards, policies, the ownership test, disputes and the HTTP service."""

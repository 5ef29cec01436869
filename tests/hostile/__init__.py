"""Attacks as a hostile client would run them, each measured while it runs."""

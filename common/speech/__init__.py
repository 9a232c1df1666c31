"""Spoken queries: speech recognizers behind one interface, and the catalog's vocabulary."""

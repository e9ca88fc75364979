"""Offline tools: weights fetching, model conversion, demo data. Not part of the installed package."""

"""Networking: listeners, TLS, DNS."""

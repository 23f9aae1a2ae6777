"""Networking: the relay between a client and its server (sbuf), listeners, TLS, DNS."""

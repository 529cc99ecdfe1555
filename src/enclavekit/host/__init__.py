"""The untrusted host side: relays and proxies that see only ciphertext."""

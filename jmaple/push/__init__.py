"""Push (RFC 8620 §7, RFC 8887): the broker and its transports."""

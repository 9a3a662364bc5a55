"""JMAP machinery (RFC 8620): dispatcher, plugin contract, standard methods; no HTTP here."""

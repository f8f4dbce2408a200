"""Secure Boot and TPM2 PCR signing keys: a key set on disk (`hostbuild keys init`), and the
profile's public certificates with the build's private keys checked against them."""

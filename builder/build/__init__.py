"""Stage 2, the build: takes a `Profile`, gives a verified root tree and the build's record.

Mirrors, artifact downloads, rendered elements, the diskimage-builder run, the lock and build
number, the manifest and SBOM, and the trixie tools tree the later stages run their tools from.
"""

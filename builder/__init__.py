"""hostbuild: immutable, single-purpose host OS images for Kubernetes nodes."""

__version__ = "0.1.0"

"""svcops: Kubernetes-style Services for plain Debian machines, pushed with pyinfra."""

__version__ = "0.1.0"

"""memwatch: evict Kubernetes pods that pass their memory-watch limit, before the kernel OOM killer does."""

__version__ = "0.1.0"

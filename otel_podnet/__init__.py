"""otel-podnet: per-pod TCP connections and traffic, counted in the kernel with eBPF,
exported as OpenTelemetry metrics."""

__version__ = "0.1.0"

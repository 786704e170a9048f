"""`svcops watch`: the long-running controller that keeps endpoints to what is ready.

    agent       the probe agent each node runs for its own workloads (standard library only)
    readiness   the pure part: probe reports and node liveness in, `Readiness` out
    nodes       one SSH connection and one agent per node, their reports as events
    controller  the loop: events -> readiness -> compile -> push what changed
    metrics     the Prometheus metrics it exposes
"""

"""pygen on a Ray cluster: the value-level seam (``pygen.runtime.Runtime``) over Ray's
public API.  ``pygen.init(address=...)`` connects (``connect.connect``); docs/cluster.md
lists what differs from the local runtime."""

"""The data plane's outbound tunnel agent; the wire format it speaks is :mod:`choreo_wire.protocol`."""

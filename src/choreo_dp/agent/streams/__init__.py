"""On-demand streams of the agent (issue 16): logs, events and live state of the apps it manages,
sent through the tunnel under the control plane's credit, never stored. See docs/protocol.md."""

from choreo_dp.agent.streams.channel import Channel, StreamStop
from choreo_dp.agent.streams.manager import StreamContext, StreamManager

__all__ = ["Channel", "StreamContext", "StreamManager", "StreamStop"]

"""autopm-realtime: a real-time event hub for a software project, over WebSocket and SSE."""

__version__ = "0.1.0"

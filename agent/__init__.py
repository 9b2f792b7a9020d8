"""mcp-scaling-agent: alert-driven, guarded, reversible changes to KEDA ScaledObjects."""

__version__ = "0.1.0"

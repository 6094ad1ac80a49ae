"""Example agents referenced from docs/agent-sdk.md."""

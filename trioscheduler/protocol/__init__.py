"""The wire protocol: message classes, codec and error codes, shared by the session and node endpoints."""

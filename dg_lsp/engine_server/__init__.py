"""The shared engine server: one resident model answering many language servers over HTTP."""

"""Pure scheduling policies: no I/O, no trio, no clock of their own. Each is tested without sockets."""

"""Transports move bytes between a connection's sink and the wire.

Each one turns requests into :class:`~flask_realtime.connection.Connection`
objects registered with the node, and nothing else: no transport knows
about brokers, presence or channels.
"""

"""The Pusher Channels protocol (version 7) on the node's channels.

Off unless ``REALTIME_PUSHER`` is set (config/pusher.py). Pusher clients and
native protocol-v1 clients share channels, presence and the cluster.
"""

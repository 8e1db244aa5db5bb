"""Opens a socket while being imported (before it is ready)."""

import socket

socket.socket(socket.AF_INET, socket.SOCK_STREAM)

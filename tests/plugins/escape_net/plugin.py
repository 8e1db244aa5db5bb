"""Network escapes: a unix socket path, TCP to loopback and to the internet."""

import socket

import curvemesh_plugin as cp


@cp.function()
def unix(args):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(args["path"])
    return True


@cp.function()
def tcp(args):
    s = socket.create_connection((args["host"], args["port"]), timeout=2)
    s.close()
    return True

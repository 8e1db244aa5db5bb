"""Resource hogs: memory, CPU, time, file size."""

import signal

import curvemesh_plugin as cp


@cp.function()
def memory(args):
    hoard = []
    while True:
        hoard.append(bytearray(16 * 1024 * 1024))


@cp.function()
def spin(args):
    while True:
        pass


@cp.function()
def spin_ignoring_sigxcpu(args):
    signal.signal(signal.SIGXCPU, signal.SIG_IGN)
    while True:
        pass


@cp.function()
def big_file(args):
    with open("big", "wb") as f:
        for _ in range(args["mb"]):
            f.write(b"\0" * (1024 * 1024))
    return True

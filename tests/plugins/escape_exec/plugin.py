"""New programs and processes: exec, subprocess, a fork bomb."""

import os
import subprocess

import curvemesh_plugin as cp


@cp.function()
def execv(args):
    os.execv("/bin/sh", ["sh", "-c", "echo escaped"])


@cp.function()
def run(args):
    return subprocess.run(["/bin/sh", "-c", "echo escaped"], capture_output=True).stdout


@cp.function()
def fork_bomb(args):
    while True:
        os.fork()


@cp.function()
def threads(args):
    """Threads are not processes: allowed."""
    import threading
    out = []
    workers = [threading.Thread(target=out.append, args=(n,)) for n in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sorted(out)

"""``python -m bench`` (``make bench``): the broker benchmark.

Three setups carry the same 100-byte requests from the same raw pyzmq client
to the same raw pyzmq echo peer, all over ipc with CURVE and ZAP on:

* ``direct``: client DEALER -> echo ROUTER (the floor);
* ``forwarder``: through :mod:`bench.forwarder`, a minimal CURVE forwarding broker;
* ``broker``: through the full broker (``python -m services.broker``), every check on.

Each round measures every setup in turn (the order rotates): sequential round
trips (p50, p99), then pipelined throughput with 64 requests in flight; then
round trips through the real runtime (MeshClient -> broker -> ServiceRunner;
target, issue 18: p50 <= 1.3x the raw full-broker p50). After the rounds, the
broker's growth curve (issue 18): the raw client's p50 through the full broker
with 1, 50 and 200 connected peers (the measured client and idle CURVE peers of
:mod:`bench.idlepeers`, each registered and heartbeating), then with 1 again to
show the drift of the run; ``--peer-counts`` sets the counts, ``--no-peer-curve``
skips it. While a setup is measured the other setups'
processes are frozen (SIGSTOP; ``--no-isolate`` leaves them running), so
each one has the two cores to itself. Figures are medians across rounds; the table and
``bench/results/latest.json`` give each one with its baselines, ratios and
targets. ``--profile`` runs the brokers and the runtime echo service under cProfile, and
profiles this process's runtime calls (the ``MeshClient`` side), and prints where their
time goes instead (its figures are distorted and not written).

Then, once the broker setups are stopped, the keyvault figures (:mod:`bench.keyvault`;
informational, no targets): unlock time and peak RSS with the master Argon2id
profile, and ``keyvault.keys.get`` p50/p99 over the real broker and keyvault,
beside the same client's ``keyvault.health``. ``--no-keyvault`` skips them.

Then the storage figures (:mod:`bench.storage`, :mod:`bench.storage_mesh`): each engine
encrypted against its plaintext twin in process (targets: SQLCipher >= 0.7x sqlite3, DuckDB
encrypted bulk insert >= 0.8x plain, a 1 GiB file through FileStore with < 64 MiB resident),
the real storage service over the mesh (p50, p99, pipelined calls/s), and the backup and restore
growth curve (one store filled through the mesh to each ``--backup-sizes`` point, 1 and 4 GiB by
default, backed up there, each archive restored into a fresh home and read back, each job
``--backup-rounds`` times: job seconds, s/GiB, MiB/s, storage's CPU s/GiB split into user and
kernel time, archive size, and the per-GiB slopes, largest size over smallest). ``--no-storage``
skips them. A backup or restore that fails is reported and makes the exit status 2.

Then meshctl's start-up (:mod:`bench.startup`): ``--help``, ``--version``, ``status --json`` and
``ping mesh`` (against an initialised home whose mesh is down) beside ``python -c pass``, as ratios
with the targets of issue 13. ``--no-startup`` skips it.

Then authn (:mod:`bench.authn`, issue 14) over the real broker, keyvault, audit and authn:
``authn.login.password`` beside one Argon2id verify in process (the repository's authentication
profile; informational), ``authn.verify`` beside ``authn.health`` (target: p50 <= 1.2x), and
``shared.tokens.verify_access`` in process with the keys of ``authn.keys`` (target: p50 <= 100 us);
and passkey logins with a software authenticator beside the password login (informational).
``--no-authn`` skips it.

Then authz (:mod:`bench.authz`, issue 15) over the real broker, keyvault, audit, authn, authz and
storage: ``Authority.check`` in process, uncached beside one ``cedarpy.is_authorized`` call and
cached (target: p50 <= 20 us); ``authz.check`` over the mesh beside ``authz.health``, answered
from authz's cache and recorded each time (a sensitive category), one by one and pipelined
(informational); a person's value read with their token (``storage.kv.get``: storage asks
``authn.verify`` and ``authz.check`` before the get) beside the same client's ``storage.health``
(target: p50 <= 3.5x) and the same get of the caller's own value (no gate; informational).
``--no-authz`` skips it.

Then pairing (:mod:`bench.pairing`, issue 16; root): pairing wall time end to end across two network
namespaces (target: p50 under 2 s), and a person's read from the paired device over tcp beside the same
read over ipc (informational). ``--no-pairing`` skips it.

Last, plugins (:mod:`bench.plugins`, issue 17) over tests/plugin_rig.py's in-process mesh with plugin-host:
``plugin-host.call`` to a plugin whose function reads its own value from storage (client -> broker ->
plugin-host -> sandboxed child -> plugin-host -> broker -> storage and back) beside the same client's direct
``storage.kv.get`` of its own value, sequential p50/p99 and pipelined calls/s (through one plugin, whose
child serves one call at a time, and two), informational; and a plugin's cold start as plugin-host starts
it, every sandbox layer applied (target: p50 under 300 ms), beside ``python -I -B -c pass``. Every sandbox
layer must apply (root here), or the section stops with an error rather than measure a weaker sandbox.
``--no-plugins`` skips it; ``--only SECTION`` runs one section.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import itertools
import os
import signal
import sys
from typing import Any, Final

import zmq

from shared import MeshClient
from shared.provision import add_identity

from . import audit, authn, authz, keyvault, pairing, plugins, report, startup, storage, storage_mesh
from .harness import REPO, BenchError, Child, Children, make_home, remove_home
from .idlepeers import idle_names
from .measure import RawClient, cpu_seconds, percentile, runtime_connect, runtime_round_trips
from .profile import print_profile
from .wire import IDENTITIES, ipc, server_key

READY_TIMEOUT = 60.0
#: The child processes ``--profile`` runs under cProfile (the runtime client is profiled in process).
PROFILED: Final = ("rtecho", "broker", "forwarder")
SECTIONS: Final = ("broker", "keyvault", "storage", "startup", "authn", "authz", "pairing", "plugins", "audit")
#: --flag -> StorageOptions field (None on the command line: the default, or --quick's value).
STORAGE_FLAGS: Final = {
    "storage_rounds": ("rounds", "interleaved rounds of each comparison and of the mesh calls"),
    "sql_rows": ("sql_rows", "rows per SQLCipher/sqlite3 bulk insert, and as many point selects"),
    "duckdb_rows": ("duckdb_rows", "rows ingested per DuckDB twin (10,000 per transaction, as the store)"),
    "duckdb_scan_rows": ("duckdb_scan_rows", "rows of the DuckDB engine-bound write and scan"),
    "kv_items": ("kv_items", "values put and got per RocksDB twin"),
    "kv_rounds": ("kv_rounds", "interleaved rounds of the RocksDB twins (the median is the figure)"),
    "stream_mib": ("stream_mib", "MiB through STREAM and raw AES-256-GCM each way"),
    "rss_file_mib": ("rss_file_mib", "MiB of the file written and read through FileStore (peak RSS)"),
    "storage_calls": ("calls", "sequential mesh calls per method per round"),
    "storage_messages": ("messages", "pipelined mesh calls per method per round"),
    "storage_window": ("window", "mesh calls in flight for throughput"),
    "storage_warmup": ("warmup", "mesh calls per method before the rounds"),
    "backup_sizes": ("backup_sizes", "MiB of data stored through the mesh at each point of the backup and restore "
                     "curve, increasing, comma-separated"),
    "backup_rounds": ("backup_rounds", "backups, and restores, at each size of the curve (the median is the figure)"),
}
#: --flag -> AuthnOptions field (None on the command line: the default, or --quick's value).
AUTHN_FLAGS: Final = {
    "authn_rounds": ("rounds", "interleaved rounds of every authn measurement"),
    "authn_logins": ("logins", "password logins per round, and as many Argon2id verifies in process"),
    "authn_calls": ("calls", "sequential authn.verify and authn.health calls each per round"),
    "authn_messages": ("messages", "pipelined authn.verify and authn.health calls each per round"),
    "authn_window": ("window", "authn calls in flight for throughput"),
    "authn_local": ("local", "verify_access (and Ed25519 alone) calls in process per round"),
    "authn_warmup": ("warmup", "calls of each mesh method before the rounds (10x in process)"),
}
#: --flag -> AuthzOptions field (None on the command line: the default, or --quick's value).
AUTHZ_FLAGS: Final = {
    "authz_rounds": ("rounds", "interleaved rounds of every authz measurement"),
    "authz_local": ("local", "in-process decisions of each kind (uncached, cached, cedarpy alone) per round"),
    "authz_calls": ("calls", "sequential calls of each authz and storage method per round"),
    "authz_warmup": ("warmup", "calls of each mesh method before the rounds (10x in process)"),
    "authz_pipelined": ("pipelined", "authz.check calls per round from 32 concurrent tasks, recorded and not"),
}

#: --flag -> PairingOptions field (None on the command line: the default, or --quick's value).
PAIRING_FLAGS: Final = {
    "pairings": ("pairings", "devices paired end to end (each a new window and device directory)"),
    "pairing_rounds": ("rounds", "alternating blocks of detached and ipc reads, each way"),
    "pairing_reads": ("reads", "storage.kv.get calls per block"),
}

#: --flag -> PluginsOptions field (None on the command line: the default, or --quick's value).
PLUGINS_FLAGS: Final = {
    "plugins_rounds": ("rounds", "rounds of alternating sequential blocks, then pipelined runs"),
    "plugins_calls": ("calls", "sequential plugin and direct calls each per block"),
    "plugins_messages": ("messages", "pipelined calls of each kind per round"),
    "plugins_window": ("window", "calls in flight for throughput"),
    "plugins_warmup": ("warmup", "sequential calls of each kind before the rounds"),
    "plugin_starts": ("starts", "cold starts of the plugin (and as many interpreter starts)"),
}

#: The sections sized by an options class: their --flags, the class, the title of their options group.
SIZED: Final[dict[str, tuple[dict[str, tuple[str, str]], Any, str]]] = {
    "storage": (STORAGE_FLAGS, storage.StorageOptions,
                "storage (in-process ratios, the service over the mesh, backup and restore)"),
    "authn": (AUTHN_FLAGS, authn.AuthnOptions,
              "authn (password login, token verification over the mesh and in process)"),
    "authz": (AUTHZ_FLAGS, authz.AuthzOptions,
              "authz (decisions in process and over the mesh, a person's data read end to end)"),
    "pairing": (PAIRING_FLAGS, pairing.PairingOptions,
                "pairing (wall time end to end, a detached read across network namespaces beside ipc; root)"),
    "plugins": (PLUGINS_FLAGS, plugins.PluginsOptions,
                "plugins (a plugin call beside the direct mesh call, cold start in the full sandbox; root)"),
}


def _sized_group(parser: argparse.ArgumentParser, section: str) -> None:
    """The options group of a sized section: ``--no-<section>`` and a ``--<flag> N`` per size."""
    flags, sizes, title = SIZED[section]
    group = parser.add_argument_group(title)
    group.add_argument(f"--no-{section}", dest=section, action="store_false", help=f"skip the {section} figures")
    defaults, quick = sizes(), sizes.quick()
    for flag, (name, text) in flags.items():
        default, small = getattr(defaults, name), getattr(quick, name)
        if isinstance(default, tuple):  # a growth curve's points: N,N,...
            group.add_argument(f"--{flag.replace('_', '-')}", type=_numbers, metavar="N,N",
                               help=f"{text} (default {_csv(default)}, --quick {_csv(small)})")
        else:
            group.add_argument(f"--{flag.replace('_', '-')}", type=int, metavar="N",
                               help=f"{text} (default {default}, --quick {small})")


def _csv(numbers: tuple[int, ...]) -> str:
    return ",".join(str(n) for n in numbers)


def _numbers(text: str) -> tuple[int, ...]:
    """``N,N,...``: integers, comma-separated."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: integers, comma-separated") from None


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per setup per round")
    parser.add_argument("--messages", type=int, default=20000, help="pipelined messages per setup per round")
    parser.add_argument("--window", type=int, default=64, help="requests in flight for throughput")
    parser.add_argument("--runtime-calls", type=int, default=500, help="runtime calls per round (info row)")
    parser.add_argument("--warmup", type=int, default=200, help="calls before each measurement")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (2 small rounds)")
    parser.add_argument("--profile", action="store_true",
                        help="run the brokers and the runtime echo service (and the runtime calls) under cProfile "
                             "and print their hot spots (figures not written)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="leave the other setups' processes running while one is measured")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a target is missed")
    parser.add_argument("--keep", action="store_true",
                        help="keep the broker setups' temporary mesh home (logs, profiles)")
    parser.add_argument("--only", choices=SECTIONS, help="run this section only")
    parser.add_argument("--peer-counts", default="1,50,200",
                        help="connected peers of the broker growth curve, increasing (default 1,50,200)")
    parser.add_argument("--peer-rounds", type=int, default=3, help="p50 runs per peer count (default 3)")
    parser.add_argument("--no-peer-curve", dest="peer_curve", action="store_false",
                        help="skip the broker growth curve")
    kv = parser.add_argument_group("keyvault (informational figures, no targets)")
    kv.add_argument("--no-keyvault", dest="keyvault", action="store_false", help="skip the keyvault figures")
    kv.add_argument("--unlock-runs", type=int, default=3,
                    help="unlocks with the master profile, each in its own process (default 3)")
    kv.add_argument("--key-calls", type=int, default=2000,
                    help="sequential keyvault.keys.get (and keyvault.health) calls (default 2000)")
    kv.add_argument("--key-blocks", type=int, default=4, help="alternating blocks the key calls are split in")
    kv.add_argument("--key-warmup", type=int, default=200, help="calls of each kind before measuring")
    _sized_group(parser, "storage")
    su = parser.add_argument_group("meshctl start-up (against python -c pass)")
    su.add_argument("--no-startup", dest="startup", action="store_false", help="skip the start-up figures")
    su.add_argument("--startup-rounds", type=int, default=None, metavar="N",
                    help="rounds of every command, each run once a round (default 15, --quick 5)")
    _sized_group(parser, "authn")
    _sized_group(parser, "authz")
    _sized_group(parser, "pairing")
    _sized_group(parser, "plugins")
    au = parser.add_argument_group("audit (start-to-ready as the log grows, beside the whole-log verification)")
    au.add_argument("--no-audit", dest="audit", action="store_false", help="skip the audit figures")
    au.add_argument("--audit-sizes", type=lambda text: tuple(int(v) for v in text.split(",")), default=None,
                    metavar="N,N,...", help="log sizes in records (default 10000,100000,1000000; --quick 2000,10000)")
    au.add_argument("--audit-rounds", type=int, default=None, metavar="N",
                    help="alternating start / full-verify rounds per size (default 3, --quick 2)")
    args = parser.parse_args(argv)
    sizes = audit.AuditOptions.quick() if args.quick else audit.AuditOptions()
    args.audit_options = dataclasses.replace(
        sizes, **({"sizes": args.audit_sizes} if args.audit_sizes else {}),
        **({"rounds": args.audit_rounds} if args.audit_rounds else {}))
    if args.audit_options.rounds < 1 or any(n < 1 for n in args.audit_options.sizes):
        parser.error("--audit-sizes and --audit-rounds must be >= 1")
    for section, (flags, sizes, _title) in SIZED.items():
        options = dataclasses.replace(
            sizes.quick() if args.quick else sizes(),
            **{name: getattr(args, flag) for flag, (name, _) in flags.items() if getattr(args, flag) is not None})
        # A tuple option (a growth curve's sizes) counts by its smallest point.
        if any((min(v) if isinstance(v, tuple) else v) < 1 for v in options.params().values()):
            parser.error(f"every {section} option must be >= 1")
        setattr(args, f"{section}_options", options)
    backup_sizes = args.storage_options.backup_sizes
    if backup_sizes[0] < 8 or any(b < a + 8 for a, b in itertools.pairwise(backup_sizes)):
        parser.error("--backup-sizes takes increasing MiB counts, the first >= 8 and each >= 8 above the one "
                     "before (the fill uploads 8 MiB files)")
    if args.only is not None and not getattr(args, args.only, True):  # --only X with --no-X
        parser.error(f"--only {args.only} contradicts --no-{args.only}")
    if args.profile and args.only not in (None, "broker"):
        parser.error("--profile profiles the brokers: it runs the broker section only")
    if args.startup_rounds is None:
        args.startup_rounds = 5 if args.quick else 15
    if args.startup_rounds < 1:
        parser.error("--startup-rounds must be >= 1")
    try:
        args.peer_counts = [int(c) for c in args.peer_counts.split(",")]
    except ValueError:
        parser.error("--peer-counts takes increasing integers, comma-separated")
    if (not args.peer_counts or args.peer_counts[0] < 1 or args.peer_rounds < 1
            or any(b <= a for a, b in zip(args.peer_counts, args.peer_counts[1:], strict=False))):
        parser.error("--peer-counts takes increasing integers >= 1, --peer-rounds >= 1")
    if args.quick:
        args.rounds, args.calls, args.messages, args.runtime_calls = 2, 300, 3000, 100
        args.peer_rounds = 1
        args.key_calls, args.key_warmup = 400, 50
    if args.unlock_runs < 1 or args.key_blocks < 1 or args.key_calls < args.key_blocks or args.key_warmup < 1:
        parser.error("--unlock-runs, --key-blocks and --key-warmup must be >= 1, --key-calls >= --key-blocks")
    if args.key_calls + args.key_warmup >= keyvault.SPOOL_BOUND:
        parser.error(f"--key-calls + --key-warmup must stay below {keyvault.SPOOL_BOUND} (keyvault's audit "
                     "spool bound: nothing drains it yet, and a full spool refuses every key release)")
    return args


def _start(kids: Children, args: argparse.Namespace, context: zmq.Context[zmq.Socket[bytes]],
           ) -> dict[str, RawClient]:
    """Start every server process and its echo peer; return a connected client per setup."""
    home = kids.home
    prof = {name: (home.log / f"{name}.prof" if args.profile else None) for name in PROFILED}
    direct, fwd = ipc(home, "direct"), ipc(home, "fwd")
    waiting = [
        kids.spawn("direct-echo", "bench.echo", ["serve", direct], setups=["direct"]),
        kids.spawn("forwarder", "bench.forwarder", [fwd], setups=["forwarder"], profile=prof["forwarder"]),
        kids.spawn("forwarder-echo", "bench.echo", ["connect", fwd, "broker"], setups=["forwarder"]),
    ]
    kids.spawn("broker", "services.broker", setups=["broker", "runtime"], profile=prof["broker"], guard=True)
    waiting += [kids.spawn("broker-echo", "bench.echo", ["connect", home.broker_endpoint, "broker"],
                           setups=["broker"]),
                kids.spawn("rtecho", "bench.rtservice", setups=["runtime"], profile=prof["rtecho"])]
    for child in waiting:  # the broker-echo registering proves the broker is up.
        kids.wait_ready(child, READY_TIMEOUT)
    broker_key = server_key(home, "broker")
    clients = {"direct": RawClient("direct", context, home, server_key(home, "echo"), direct),
               "forwarder": RawClient("forwarder", context, home, broker_key, fwd),
               "broker": RawClient("broker", context, home, broker_key, home.broker_endpoint)}
    # The mesh ACL is deny-by-default and on: the bench identity may call echo.echo only.
    clients["broker"].expect_refusal("echo.health", "FORBIDDEN")
    return clients


def _measure(args: argparse.Namespace, kids: Children, clients: dict[str, RawClient],
             loop: asyncio.Runner) -> report.Rounds:
    """Warm up, then run the interleaved rounds; return every figure's per-round values."""
    rounds: report.Rounds = {key: {s: [] for s in report.SETUPS} for key in report.FIGURES}
    rounds.update({key: {"runtime": []} for key in report.RUNTIME_FIGURES})
    runtime = loop.run(runtime_connect(kids.home))
    try:
        _rounds(args, kids, clients, loop, runtime, rounds)
        if args.peer_curve and not args.profile:
            rounds.update(_peer_curve(args, kids, clients["broker"]))
    except BenchError:
        kids.check_alive()  # a child that died explains a missing reply better than the timeout.
        raise
    finally:
        kids.focus(None)
        loop.run(runtime.close())
    return rounds


def _rounds(args: argparse.Namespace, kids: Children, clients: dict[str, RawClient], loop: asyncio.Runner,
            runtime: MeshClient, rounds: report.Rounds) -> None:
    """Warm every setup up, then run the interleaved rounds, appending to ``rounds``."""
    focus = kids.focus if args.isolate else (lambda _setup: None)
    servers = {c.name.removesuffix("-echo"): c.proc.pid for c in kids.started
               if c.name in ("direct-echo", "forwarder", "broker")}
    for name, client in clients.items():
        focus(name)
        client.round_trips(5 * args.warmup)
        client.throughput(min(args.messages, 5000), args.window)
    focus("runtime")
    loop.run(runtime_round_trips(runtime, args.warmup))
    setups = list(report.SETUPS)
    client_profile = cProfile.Profile() if args.profile else None
    for r in range(args.rounds):
        order = setups[r % 3:] + setups[:r % 3]
        for name in order:
            focus(name)
            clients[name].round_trips(args.warmup)
            samples = clients[name].round_trips(args.calls)
            rounds["rtt_p50_us"][name].append(percentile(samples, 0.5) * 1e6)
            rounds["rtt_p99_us"][name].append(percentile(samples, 0.99) * 1e6)
        for name in order:
            focus(name)
            clients[name].round_trips(args.warmup)
            cpu_before = cpu_seconds(servers[name])
            rounds["throughput_msg_s"][name].append(clients[name].throughput(args.messages, args.window))
            cpu_after = cpu_seconds(servers[name])
            if cpu_before is not None and cpu_after is not None:
                rounds["server_cpu_us"][name].append((cpu_after - cpu_before) / args.messages * 1e6)
        focus("runtime")
        loop.run(runtime_round_trips(runtime, args.warmup))
        if client_profile is not None:
            client_profile.enable()
        samples = loop.run(runtime_round_trips(runtime, args.runtime_calls))
        if client_profile is not None:
            client_profile.disable()
        rounds["runtime_rtt_p50_us"]["runtime"].append(percentile(samples, 0.5) * 1e6)
        rounds["runtime_rtt_p99_us"]["runtime"].append(percentile(samples, 0.99) * 1e6)
        kids.check_alive()
        print(f"round {r + 1}/{args.rounds}: p50 us "
              + " ".join(f"{s}={rounds['rtt_p50_us'][s][-1]:.0f}" for s in setups)
              + " | msg/s " + " ".join(f"{s}={rounds['throughput_msg_s'][s][-1]:.0f}" for s in setups)
              + f" | runtime p50 {rounds['runtime_rtt_p50_us']['runtime'][-1]:.0f} us", flush=True)
    if client_profile is not None:
        client_profile.dump_stats(kids.home.log / "runtime-client.prof")


def _peer_curve(args: argparse.Namespace, kids: Children, client: RawClient) -> report.Rounds:
    """The broker's p50 with each count of connected peers: the measured client plus idle peers
    (:mod:`bench.idlepeers`, registered and heartbeating), added between counts; then, with the
    idle peers gone, the first count again (the run's drift). Only the broker setup runs."""
    curve: dict[str, list[float]] = {}
    idle: list[Child] = []
    have = 1

    def measure(label: str) -> None:
        kids.focus("broker")
        client.round_trips(args.warmup)
        curve[label] = [percentile(client.round_trips(args.calls), 0.5) * 1e6 for _ in range(args.peer_rounds)]
        print(f"peers {label}: p50 us " + " ".join(f"{v:.0f}" for v in curve[label]), flush=True)

    try:
        for count in args.peer_counts:
            if count > have:
                child = kids.spawn(f"idle-{have}", "bench.idlepeers",
                                   [kids.home.broker_endpoint, str(have), str(count - have)], setups=["broker"])
                kids.focus("broker")
                kids.wait_ready(child, READY_TIMEOUT)
                idle.append(child)
                have = count
            measure(str(count))
    finally:
        for child in reversed(idle):
            kids.stop(child)
    measure(f"{args.peer_counts[0]} again")
    return {report.PEER_CURVE: curve}


def _sections(args: argparse.Namespace) -> list[str]:
    """The sections this run measures, in order (``--profile`` profiles the brokers only)."""
    if args.only is not None:
        return [args.only]
    return [s for s in SECTIONS if getattr(args, s, True) and (s == "broker" or not args.profile)]


def _broker(args: argparse.Namespace) -> report.Rounds:
    """The broker setups in their own home: per-round values (and, with --profile, the hot spots).
    Every child is stopped and the home removed (unless --keep) on the way out."""
    home = make_home()
    try:
        if args.peer_curve and not args.profile:
            for name in idle_names(1, args.peer_counts[-1] - 1):
                add_identity(home, name, "service")
        with Children(home) as kids:
            context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
            clients: dict[str, RawClient] = {}
            try:
                clients = _start(kids, args, context)
                with asyncio.Runner() as loop:
                    rounds = _measure(args, kids, clients, loop)
            finally:
                for client in clients.values():
                    client.close()
                context.term()
            if args.profile:
                for name in PROFILED:
                    child = next(c for c in kids.started if c.name == name)
                    kids.stop(child)
                    print_profile(name, home.log / f"{name}.prof")
                print_profile("runtime client (this process's MeshClient calls)", home.log / "runtime-client.prof")
        return rounds
    finally:
        if args.keep:
            print(f"mesh home kept at {home.root}", file=sys.stderr)
        else:
            remove_home(home)


def run(args: argparse.Namespace) -> int:
    """Measure each section in turn (each has the machine to itself: the one before is stopped),
    print the table, write the results; the exit status says whether targets were met."""
    load_before = os.getloadavg()
    sections = _sections(args)
    figs: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {"sections": sections}
    if "broker" in sections:
        figs.update(report.figures(_broker(args)))
        params.update({k: getattr(args, k) for k in
                       ("rounds", "calls", "messages", "window", "runtime_calls", "warmup", "isolate",
                        "peer_curve", "peer_counts", "peer_rounds")})
        params.update(body_bytes=100, transport="ipc", curve=True, identities=dict(IDENTITIES))
    if "keyvault" in sections:
        kv = keyvault.measure(args.unlock_runs, args.key_calls, args.key_blocks, args.key_warmup)
        figs.update(report.keyvault_figures(kv))
        params["keyvault"] = {
            "unlock_runs": args.unlock_runs, "master_profile": kv["unlock"]["profile"],
            "key_calls": kv["fetch"]["calls"], "key_blocks": args.key_blocks, "key_warmup": args.key_warmup,
            "caller": keyvault.CALLER, "purpose": keyvault.PURPOSE, "keystore": "file",
            "fetch_profile": {"memory_kib": keyvault.FETCH_PROFILE.memory_kib,
                              "iterations": keyvault.FETCH_PROFILE.iterations,
                              "parallelism": keyvault.FETCH_PROFILE.parallelism, "test_profiles": True}}
    if "storage" in sections:
        st = storage.measure(args.storage_options)
        figs.update(report.storage_figures(st))
        params["storage"] = {**args.storage_options.params(), "engines": st["info"],
                             "caller": st["mesh"]["caller"], "operator": st["mesh"]["operator"],
                             "identities": dict(storage_mesh.IDENTITIES), "keystore": "file",
                             "setup_master_profile": dataclasses.asdict(storage_mesh.SETUP_PROFILE),
                             "backup_passphrase": True, "backup_disk": st["mesh"]["disk"]}
    if "startup" in sections:
        figs.update(startup.figures(startup.measure(args.startup_rounds)))
        params["startup"] = {"rounds": args.startup_rounds, "meshctl": startup.meshctl_prefix()[1],
                             "mesh": "initialised home, mesh down"}
    if "authn" in sections:
        au = authn.measure(args.authn_options)
        figs.update(authn.figures(au))
        params["authn"] = {**au["options"], "caller": au["caller"], "operator": au["operator"],
                           "identities": dict(authn.IDENTITIES), "keystore": "file",
                           "authentication_profile": au["login"]["profile"],
                           "setup_master_profile": dataclasses.asdict(authn.SETUP_PROFILE),
                           "passkey": au["passkey"]}
    if "authz" in sections:
        az = authz.measure(args.authz_options)
        figs.update(authz.figures(az))
        params["authz"] = {**az["options"], "caller": az["caller"], "caller_roles": list(authz.CALLER_ROLES),
                           "operator": az["operator"], "identities": dict(authz.IDENTITIES), "keystore": "file",
                           "authentication_profile": az["authentication_profile"],
                           "setup_master_profile": dataclasses.asdict(authz.SETUP_PROFILE),
                           "in_process": {k: az["local"][k] for k in ("policies", "grants", "uncached_by")},
                           "value_bytes": az["mesh"]["value_bytes"]}
    if "pairing" in sections:
        pa = pairing.measure(args.pairing_options)
        figs.update(pairing.figures(pa))
        params["pairing"] = {**pa["options"], "addresses": pa["addresses"], "keystore": "file",
                             "mesh": "meshctl up in the mesh namespace (supervisord, every process)"}
    if "plugins" in sections:
        pl = plugins.measure(args.plugins_options)
        figs.update(plugins.figures(pl))
        params["plugins"] = {**pl["options"], "caller": pl["caller"], "plugins": list(plugins.PLUGINS),
                             "layers_required": pl["layers"], "value_bytes": pl["value_bytes"],
                             "messages_per_s": pl["messages_per_s"], "cpu_quota_s": pl["cpu_quota_s"],
                             "keystore": "file",
                             "mesh": "in process (tests/plugin_rig.py): broker thread, services on one event loop"}
    if "audit" in sections:
        ad = audit.measure(args.audit_options)
        figs.update(audit.figures(ad))
        params["audit"] = {**ad["options"], "checkpoint_every": audit.EVERY, "anchor": "at the end (a clean stop)",
                           "in_process": "open + anchor.resume (start) vs open + scan.verify_head with alert replay"}
    print()
    print(report.table(figs))
    if args.profile:
        print("\n(--profile: the brokers and the runtime ran under cProfile; these figures are not comparable, "
              "not written)")
        return 0
    path = report.write(figs, params, report.machine(load_before))
    met = all(f["met"] for f in figs.values() if f["met"] is not None)
    print(f"\nall targets met: {'yes' if met else 'NO'}; written to {path.relative_to(REPO)}")
    errors = report.storage_errors(figs)
    for error in errors:
        print(f"bench: not measured: {error}", file=sys.stderr)
    if errors:
        return 2
    return 1 if args.check and not met else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse arguments, make SIGTERM unwind (so children are stopped), run."""
    args = _args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""A gRPC server and client (grpcio, no generated code: raw bytes
messages) for weir's tests.

  grpc_pair.py serve ADDR PORT LOG   serves pkg.Svc/{Get,Delete} (echo),
                                     appends each call's method to LOG
  grpc_pair.py call TARGET METHOD...  unary calls of pkg.Svc/METHOD, in
                                     order on one channel; prints per call
                                     `OK <reply>` or
                                     `ERR <StatusCode name> <details>`
  grpc_pair.py bench TARGET METHOD SECONDS
                                     unary calls on one channel for
                                     SECONDS; prints `calls <n> seconds <s>`
"""
import sys
import time
from concurrent import futures

import grpc


def serve(addr, port, log):
    def handler(name):
        def h(req, ctx):
            with open(log, "a") as f:
                f.write(name + "\n")
            return b"ok:" + req

        return grpc.unary_unary_rpc_method_handler(h)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(
            "pkg.Svc", {"Get": handler("Get"), "Delete": handler("Delete")}),)
    )
    server.add_insecure_port("%s:%s" % (addr, port))
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(target, methods):
    with grpc.insecure_channel(target) as ch:
        for method in methods:
            rpc = ch.unary_unary("/pkg.Svc/" + method)
            try:
                print("OK", rpc(b"x", timeout=5).decode(), flush=True)
            except grpc.RpcError as e:
                print("ERR", e.code().name, e.details(), flush=True)


def bench(target, method, seconds):
    with grpc.insecure_channel(target) as ch:
        rpc = ch.unary_unary("/pkg.Svc/" + method)
        rpc(b"x", timeout=5)
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            rpc(b"x", timeout=5)
            n += 1
        print("calls", n, "seconds", round(time.monotonic() - t0, 3))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    elif cmd == "call":
        call(sys.argv[2], sys.argv[3:])
    elif cmd == "bench":
        bench(sys.argv[2], sys.argv[3], float(sys.argv[4]))

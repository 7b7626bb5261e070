#!/usr/bin/env python3
"""A small HTTP/2 prior-knowledge (h2c) server for weir's tests, on the
`h2` library: answers every request with 200 and `served METHOD PATH`, and
appends `METHOD PATH` to LOG for each request it sees (so a test can tell
a denied request never reached it).

usage: h2c_server.py ADDR PORT LOG [PREFACE_DELAY]

PREFACE_DELAY (seconds, default 0): wait that long after accepting a
connection before sending the server's preface (SETTINGS), as a busy
server may; the client's first request then reaches weir before any
server byte (the case of weir's answer to a denied request that must
carry the server preface itself).
"""
import socket
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events


def handle(sock, log, delay):
    if delay > 0:
        time.sleep(delay)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    try:
        sock.sendall(conn.data_to_send())
    except OSError:
        sock.close()
        return
    heads = {}
    while True:
        try:
            data = sock.recv(65535)
        except OSError:
            break
        if not data:
            break
        try:
            events = conn.receive_data(data)
        except Exception as e:  # a protocol error: the connection is gone
            # h2 queued a GOAWAY (e.g. PROTOCOL_ERROR for a request without
            # :method, what weir's per-stream refusal makes of a denied
            # one): send it, as a server would, then close.
            print("error:", repr(e), file=sys.stderr, flush=True)
            try:
                sock.sendall(conn.data_to_send())
            except OSError:
                pass
            break
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                h = dict(ev.headers)
                heads[ev.stream_id] = h
                line = "%s %s" % (h[b":method"].decode(), h[b":path"].decode())
                with open(log, "a") as f:
                    f.write(line + "\n")
                body = ("served %s\n" % line).encode()
                conn.send_headers(
                    ev.stream_id,
                    [(":status", "200"), ("content-length", str(len(body)))],
                )
                conn.send_data(ev.stream_id, body, end_stream=True)
        out = conn.data_to_send()
        if out:
            try:
                sock.sendall(out)
            except OSError:  # reset (weir's RST after a denied request)
                break
    sock.close()


def main():
    addr, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(16)
    print("ready", flush=True)
    while True:
        s, _ = srv.accept()
        threading.Thread(target=handle, args=(s, log, delay), daemon=True).start()


if __name__ == "__main__":
    main()

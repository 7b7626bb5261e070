#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/seeds/ (committed; rerun after changing
the fixture in src/lib.rs). Frames are built with Scapy, independently of
weir's own wire code."""
import os, struct
from scapy.all import Ether, IP, IPv6, TCP, UDP, ICMP, ICMPv6EchoRequest, DNS, DNSQR, DNSRR, Raw, raw
from scapy.contrib.geneve import GENEVE

D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")
A, B, DNS_IP, REMOTE = "10.1.0.1", "10.1.0.2", "10.1.0.3", "10.2.0.5"
def mac(p): return "0a:58:00:00:00:%02x" % p
def pmac(p): return "02:ee:00:00:00:%02x" % p
def rec(port, frame, ctl=0): return struct.pack(">BH", port | ctl, len(frame)) + frame
def from_a(l3): return raw(Ether(src=mac(0), dst=pmac(0)) / l3)
def write(target, name, data):
    with open(os.path.join(D, target, name), "wb") as f: f.write(data)

q = DNS(id=7, rd=1, qd=DNSQR(qname="www.allowed.example"))
bad = DNS(id=8, rd=1, qd=DNSQR(qname="evil.example"))
resp = DNS(id=7, qr=1, qd=DNSQR(qname="allowed.example"), an=DNSRR(rrname="allowed.example", rdata="10.1.0.2", ttl=60))
syn = from_a(IP(src=A, dst=B) / TCP(sport=40000, dport=80, flags="S", seq=1000))
get = from_a(IP(src=A, dst=B) / TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=1) / b"GET /public HTTP/1.1\r\nHost: b\r\n\r\n")
deny = from_a(IP(src=A, dst=B) / TCP(sport=40000, dport=80, flags="PA", seq=1001, ack=1) / b"GET /private HTTP/1.1\r\nHost: b\r\n\r\n")
write("pass", "tcp4", rec(0, from_a(IP(src=A, dst=B) / TCP(sport=1234, dport=22, flags="S"))))
write("pass", "udp6", rec(0, from_a(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5000, dport=9000) / b"hi")))
write("pass", "icmp4_ttl1", rec(0, from_a(IP(src=A, dst=B, ttl=1) / ICMP() / b"x")))
write("pass", "icmp6_echo", rec(0, from_a(IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest())))
write("pass", "frag4", rec(0, from_a(IP(src=A, dst=B, flags="MF", id=9) / UDP(sport=1, dport=2) / (b"a" * 64))) + rec(0, from_a(IP(src=A, dst=B, frag=9, id=9, proto=17) / (b"b" * 16))))
write("pass", "http_allow", rec(0, syn) + rec(0, get))
write("pass", "http_deny", rec(0, syn) + rec(0, deny, 0x10))
write("pass", "dns_query", rec(0, from_a(IP(src=A, dst=DNS_IP) / UDP(sport=5353, dport=53) / q)))
write("pass", "dns_refused", rec(0, from_a(IP(src=A, dst=DNS_IP) / UDP(sport=5353, dport=53) / bad)))
write("pass", "to_remote", rec(0, from_a(IP(src=A, dst=REMOTE) / UDP(sport=7, dport=8) / b"x")))
inner = raw(Ether(src="02:bb:00:00:00:02", dst="02:bb:00:00:00:01") / IP(src=REMOTE, dst=B) / TCP(sport=3333, dport=80, flags="S"))
outer = raw(Ether(src="02:aa:00:00:00:02", dst="02:aa:00:00:00:01") / IP(src="192.168.0.2", dst="192.168.0.1") / UDP(sport=50000, dport=6081) / GENEVE(vni=0x123, proto=0x6558) / Raw(inner))
write("pass", "geneve_in", rec(3, outer))

def seg(flow, seq, payload, ctl=0): return struct.pack(">BHB", flow | ctl, seq, len(payload)) + payload
write("http_inspector", "get", seg(0, 0, b"GET /public HTTP/1.1\r\nHost: b\r\n\r\n"))
write("http_inspector", "split", seg(0, 0, b"GET /pub") + seg(0, 8, b"lic HTTP/1.1\r\nHost: b\r\n\r\n") + seg(1, 0, b"POST /x HTTP/1.1\r\n"))
write("http_inspector", "chunked", seg(0, 0, b"GET /public HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
write("http_inspector", "overlap", seg(0, 0, b"GET /public HTTP/1.1\r\n") + seg(0, 4, b"/private") + seg(0, 0, b"", 0x08))

write("dns", "query", raw(q))
write("dns", "response", raw(resp))
write("dns", "tcp_query", struct.pack(">H", len(raw(q))) + raw(q))

write("manifest", "pod.yaml", b"""apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c, image: none, ports: [{containerPort: 80}]}]}
""")
write("manifest", "netpol.yaml", b"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: demo}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: b}}}]
    ports: [{protocol: TCP, port: 80}]
""")

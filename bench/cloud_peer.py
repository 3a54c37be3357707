#!/usr/bin/python3
"""A loopback metadata service for bench/cloud.sh: one provider's documents
(tests/fixtures/cloud/) with the header it requires (GCP's
Metadata-Flavor, Azure's Metadata and api-version, Oracle's bearer, EC2's
IMDSv2 token). Prints "PORT n" once listening; serves until killed."""

import http.server
import os
import socketserver
import sys

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "cloud")


def fixture(name):
    with open(os.path.join(FIX, name)) as f:
        return f.read()


PROVIDER = sys.argv[1]
ROUTES = {
    "gcp": {
        ("GET", "/computeMetadata/v1/instance/?recursive=true"): fixture("gcp-instance.json"),
    },
    "azure": {
        ("GET", "/metadata/instance?api-version=2021-02-01"): fixture("azure-instance.json"),
    },
    "digitalocean": {("GET", "/metadata/v1.json"): fixture("digitalocean-v1.json")},
    "hetzner": {
        ("GET", "/hetzner/v1/metadata"): fixture("hetzner-metadata.yaml"),
        ("GET", "/hetzner/v1/metadata/private-networks"): fixture("hetzner-private-networks.yaml"),
    },
    "openstack": {
        ("GET", "/openstack/latest/meta_data.json"): fixture("openstack-meta_data.json"),
        ("GET", "/latest/meta-data/local-ipv4"): "192.168.10.12",
        ("GET", "/latest/meta-data/public-ipv4"): "203.0.113.12",
        ("GET", "/latest/meta-data/instance-type"): "m1.xlarge",
    },
    "oracle": {
        ("GET", "/opc/v2/instance/"): fixture("oracle-instance.json"),
        ("GET", "/opc/v2/vnics/"): fixture("oracle-vnics.json"),
    },
    "ec2": {
        ("PUT", "/latest/api/token"): "bench-token",
        ("GET", "/latest/meta-data/instance-id"): "i-0123456789abcdef0",
        ("GET", "/latest/meta-data/local-ipv4"): "10.0.1.20",
        ("GET", "/latest/meta-data/public-ipv4"): "54.1.2.3",
        ("GET", "/latest/meta-data/instance-type"): "c5.xlarge",
        ("GET", "/latest/meta-data/placement/availability-zone"): "eu-west-1a",
        ("GET", "/latest/meta-data/placement/region"): "eu-west-1",
        ("GET", "/latest/meta-data/instance-life-cycle"): "on-demand",
    },
}[PROVIDER]
REQUIRED = {
    "gcp": ("Metadata-Flavor", "Google", 403),
    "azure": ("Metadata", "true", 400),
    "oracle": ("Authorization", "Bearer Oracle", 401),
}.get(PROVIDER)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, method):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, body = 200, ROUTES.get((method, self.path))
        if REQUIRED and self.headers.get(REQUIRED[0]) != REQUIRED[1]:
            status, body = REQUIRED[2], "refused"
        elif PROVIDER == "ec2" and method == "GET" and self.headers.get("X-aws-ec2-metadata-token") != "bench-token":
            status, body = 401, ""
        elif body is None:
            status, body = 404, "Not Found"
        data = body.encode()
        self.send_response(status)
        if PROVIDER == "gcp":
            self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def do_GET(self):
        self.answer("GET")

    def do_PUT(self):
        self.answer("PUT")


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


srv = Server(("127.0.0.1", 0), Handler)
print("PORT %d" % srv.server_address[1], flush=True)
srv.serve_forever()

"""An S3-compatible server for the test suite: moto's server mode on 127.0.0.1, port chosen by the OS.

Prints `listening <host>:<port>` once it accepts connections, then serves until its standard input
closes (the test process exited), so it never outlives the tests that started it.
"""
import logging
import sys

from moto.server import ThreadedMotoServer

# One line per request would drown the test output.
logging.getLogger("werkzeug").setLevel(logging.ERROR)

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"listening {host}:{port}", flush=True)
sys.stdin.read()
server.stop()

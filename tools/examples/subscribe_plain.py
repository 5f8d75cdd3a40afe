"""A results subscriber with nothing but pyzmq and msgpack: no import from this project.

It shows that docs/protocol.md is enough to consume a pipeline from any language:
    python -m tools.examples.subscribe_plain [NAME] [--count N]
finds the pipeline's endpoint in its discovery entry (a JSON file in the runtime directory),
subscribes, and prints one line per result until the stream ends.
"""

import argparse
import glob
import json
import os
import sys
import tempfile

import msgpack
import zmq


def find_endpoint(name):
    """The results endpoint of a running pipeline: in this user's runtime directory or in a
    systemd service's (docs/protocol.md, "Finding a pipeline")."""
    uid = os.getuid()
    bases = [os.path.join(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir(), f"edge-pipeline-{uid}")]
    for run in ("/run", f"/run/user/{uid}"):
        bases += glob.glob(os.path.join(run, "edge-pipeline-*", f"edge-pipeline-{uid}"))
    for path in sorted(p for base in bases for p in glob.glob(os.path.join(base, "*", "run.json"))):
        try:
            with open(path) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if (name is None or info["name"] == name) and "results" in info["endpoints"] \
                and os.path.exists(f"/proc/{info['pid']}"):
            return info["endpoints"]["results"]  # a split pipeline's other hosts have none
    sys.exit(f"no running pipeline{' named ' + name if name else ''}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name", nargs="?")
    ap.add_argument("--count", type=int, default=0)
    args = ap.parse_args()
    sock = zmq.Context().socket(zmq.SUB)
    sock.connect(find_endpoint(args.name))
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    seen, last, dropped = 0, None, None
    while not args.count or seen < args.count:
        msg = msgpack.unpackb(sock.recv(), raw=False)
        if msg.get("schema") != 1:
            continue
        if msg["type"] == "eos":
            break
        if msg["type"] == "result":
            if last is not None and msg["result_seq"] != last + 1:  # published in order
                lost = msg["dropped"] - dropped  # the pipeline's share of the gap
                print(f"missed {msg['result_seq'] - last - 1} results ({lost} lost by the pipeline)",
                      file=sys.stderr)
            last, dropped = msg["result_seq"], msg["dropped"]
            best = msg["top"][0]
            print(f'seq {msg["seq"]}  {best["label"]} {best["prob"]:.2f}  ({msg["latency_ms"]:.0f} ms)',
                  flush=True)
            seen += 1


if __name__ == "__main__":
    main()

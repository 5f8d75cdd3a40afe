"""A results subscriber with nothing but pyzmq and msgpack: no import from this project.

It shows that docs/protocol.md is enough to consume a pipeline from any language:
    python tools/subscribe_plain.py [NAME] [--count N]
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
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    for path in sorted(glob.glob(os.path.join(base, f"edge-pipeline-{os.getuid()}", "*", "run.json"))):
        with open(path) as f:
            info = json.load(f)
        if (name is None or info["name"] == name) and os.path.exists(f"/proc/{info['pid']}"):
            return info["endpoints"]["results"]
    sys.exit(f"no running pipeline{' named ' + name if name else ''}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name", nargs="?")
    ap.add_argument("--count", type=int, default=0)
    args = ap.parse_args()
    sock = zmq.Context().socket(zmq.SUB)
    sock.connect(find_endpoint(args.name))
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    seen, last = 0, None
    while not args.count or seen < args.count:
        msg = msgpack.unpackb(sock.recv(), raw=False)
        if msg.get("schema") != 1:
            continue
        if msg["type"] == "eos":
            break
        if msg["type"] == "result":
            if last is not None and msg["result_seq"] != last + 1:
                print(f"missed {msg['result_seq'] - last - 1} results", file=sys.stderr)
            last = msg["result_seq"]
            best = msg["top"][0]
            print(f'seq {msg["seq"]}  {best["label"]} {best["prob"]:.2f}  ({msg["latency_ms"]:.0f} ms)',
                  flush=True)
            seen += 1


if __name__ == "__main__":
    main()

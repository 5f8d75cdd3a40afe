"""Make a CURVE key pair for each named host: `python -m tools.make_keys keys cam box`.

Writes KEYS/HOST.key (public: copy it to every host of the pipeline) and KEYS/HOST.key_secret
(secret, mode 0600: it stays on HOST). Point the topology's `curve.keys` at the folder.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import zmq
import zmq.auth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.make_keys", description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="where the keys go (created if missing)")
    ap.add_argument("hosts", nargs="+", help="host names as the topology names them")
    ap.add_argument("--force", action="store_true", help="replace existing key pairs")
    args = ap.parse_args(argv)
    if not zmq.has("curve"):
        print("make_keys.py: this libzmq was built without CURVE support", file=sys.stderr)
        return 1
    bad = [h for h in args.hosts if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", h)]
    if bad:
        print(f"make_keys.py: not a host name: {bad[0]!r} (letters, digits, _ . -)", file=sys.stderr)
        return 2
    os.makedirs(args.folder, mode=0o700, exist_ok=True)
    for host in args.hosts:
        secret = os.path.join(args.folder, f"{host}.key_secret")
        if os.path.exists(secret) and not args.force:
            print(f"make_keys.py: {secret} exists (--force replaces it)", file=sys.stderr)
            return 1
        public, secret = zmq.auth.create_certificates(args.folder, host)
        os.chmod(secret, 0o600)
        print(f"{host}: public {public}, secret {secret}")
    print("copy the .key files to every host; each .key_secret stays on its own host")
    return 0


if __name__ == "__main__":
    sys.exit(main())

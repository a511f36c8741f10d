"""``keyagent demo``: the agent's main job, end to end, on an embedded default.

Alice's identity lives in a SoftHSM2 token the demo creates (or in a software key file when SoftHSM2 is absent);
two separate app processes share it through her agent and talk to Bob, whose agent holds a software key. Every step
goes through the real CLI and the real sockets, as a user's apps would.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["register"]

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN_LABEL = "keyagent-demo"
DEMO_PIN = "246810"  # a throw-away token made for this demo only
DEMO_PASSPHRASE = "demo passphrase for a throw-away key"


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("demo", parents=[common], help="two apps share a token-held identity and talk to a second agent")
    p.add_argument("--software", action="store_true", help="use the software backend even when SoftHSM2 is installed")
    p.add_argument("--keep", action="store_true", help="keep the demo directory and leave the agents running")
    p.set_defaults(func=_run)


class _Demo:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.run_dir = work / "run"
        self.run_dir.mkdir(mode=0o700)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KEYAGENT_")}
        self.env["XDG_RUNTIME_DIR"] = str(self.run_dir)
        self.socks: dict[str, str] = {}

    def keyagent(self, *args: str, stdin: bytes | None = None, extra: dict[str, str] | None = None) -> bytes:
        env = dict(self.env, **(extra or {}))
        cp = subprocess.run([sys.executable, "-m", "agent", *args], input=stdin, env=env, capture_output=True,
                            timeout=120)
        if cp.returncode != 0:
            raise RuntimeError(f"keyagent {' '.join(args[:3])} failed: {cp.stderr.decode(errors='replace').strip()}")
        return cp.stdout

    def app(self, who: str, *args: str, stdin: bytes | None = None) -> bytes:
        """A separate client process that knows only KEYAGENT_SOCK, as a local app would."""
        return self.keyagent(*args, stdin=stdin, extra={"KEYAGENT_SOCK": self.socks[who]})


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _make_token(demo: _Demo) -> dict[str, str]:
    tokens = demo.work / "softhsm" / "tokens"
    tokens.mkdir(parents=True)
    conf = demo.work / "softhsm" / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    demo.env["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", DEMO_PIN,
                    "--so-pin", "13579135"], env=demo.env, check=True, capture_output=True, timeout=60)
    return {"KEYAGENT_PIN": DEMO_PIN}


def _run(args: argparse.Namespace) -> int:
    use_token = not args.software and shutil.which("softhsm2-util") is not None and os.path.exists(SOFTHSM_MODULE)
    work = Path(tempfile.mkdtemp(prefix="keyagent-demo-"))
    demo = _Demo(work)
    started: list[str] = []
    try:
        alice, bob = work / "alice", work / "bob"
        _step("1. Provision two identities")
        if use_token:
            secret = _make_token(demo)
            demo.keyagent("--home", str(alice), "init", "--backend", "pkcs11", "--module", SOFTHSM_MODULE,
                          "--token", f"label:{TOKEN_LABEL}", extra=secret)
            print(f"Alice: identity key generated INSIDE a SoftHSM2 token ({SOFTHSM_MODULE}, label {TOKEN_LABEL})")
        else:
            secret = {"KEYAGENT_PASSPHRASE": DEMO_PASSPHRASE}
            demo.keyagent("--home", str(alice), "init", "--backend", "software", extra=secret)
            why = "--software" if args.software else "SoftHSM2 not available"
            print(f"Alice: {why}: identity key in an encrypted software key file")
        bob_secret = {"KEYAGENT_PASSPHRASE": DEMO_PASSPHRASE}
        demo.keyagent("--home", str(bob), "init", "--backend", "software", extra=bob_secret)
        print("Bob:   identity key in an encrypted software key file")
        if use_token:
            listing = subprocess.run(["pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", TOKEN_LABEL,
                                      "--login", "--pin", DEMO_PIN, "--list-objects", "--type", "privkey"],
                                     env=demo.env, capture_output=True, text=True, timeout=60)
            access = [ln.strip() for ln in listing.stdout.splitlines() if "Access:" in ln or "label:" in ln]
            print("pkcs11-tool (OpenSC) sees Alice's private keys on the token:")
            for line in access:
                print(f"    {line}")

        _step("2. Start both agents (each on its own Unix socket)")
        for who, home, sec in (("alice", alice, secret), ("bob", bob, bob_secret)):
            out = demo.keyagent("--home", str(home), "start", extra=sec).decode()
            for part in out.replace("\n", ";").split(";"):
                part = part.strip()
                if part.startswith("KEYAGENT_SOCK="):
                    demo.socks[who] = part.split("=", 1)[1]
            started.append(str(home))
            print(f"{who:5s}: {demo.socks[who]}")
        ids: dict[str, str] = {}
        for who in ("alice", "bob"):
            data = json.loads(demo.app(who, "whoami", "--json").decode())
            ids[who] = data["compressed_key"]
            print(f"{who:5s}: chat key {data['compressed_key']}  installation {data['installation_id']}")

        _step("3. Bob publishes his signed prekey bundle; app #1 (a CLI process) encrypts to Bob through Alice's agent")
        bundle = demo.app("bob", "bundle")
        bundle_file = work / "bob.bundle"
        bundle_file.write_bytes(bundle)
        print(f"Bob's bundle: {len(bundle)} bytes protobuf, signed by his identity key")
        msg1 = demo.app("alice", "encrypt", "--to", ids["bob"], "--bundle", str(bundle_file),
                        stdin=b"Hello Bob, this is Alice's notes app")
        print(f"app #1 -> ProtocolMessage of {len(msg1)} bytes (X3DH header + Double Ratchet; X3DH DH with IK in the token)")
        print("Bob reads:  " + demo.app("bob", "decrypt", "--from", ids["alice"], stdin=msg1).decode())

        _step("4. Bob replies; app #2 (another process, same identity via the same agent) reads it")
        reply = demo.app("bob", "encrypt", "--to", ids["alice"], stdin=b"Hi Alice! Got it, answering your chat app")
        print(f"Bob -> {len(reply)} bytes")
        print("app #2 reads: " + demo.app("alice", "decrypt", "--from", ids["bob"], stdin=reply).decode())
        msg2 = demo.app("alice", "encrypt", "--to", ids["bob"], stdin=b"Second message, sent by app #2")
        print("Bob reads:  " + demo.app("bob", "decrypt", "--from", ids["alice"], stdin=msg2).decode())

        _step("5. What Alice's agent keeps (ratchet state on the host, encrypted at rest; keys stay in the token)")
        print(demo.app("alice", "sessions").decode().rstrip())
        print(demo.app("alice", "status").decode().rstrip())
        audit = alice / "audit.log"
        if audit.exists():
            print(f"audit log: {sum(1 for _ in audit.open())} JSON lines, one per request ({audit})")
        print("\nDemo finished: two apps shared one token-held identity and talked to a second agent.")
        return 0
    finally:
        if not args.keep:
            for started_home in started:
                subprocess.run([sys.executable, "-m", "agent", "--home", started_home, "stop"], env=demo.env,
                               capture_output=True, timeout=60)
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept: {work} (agents still running; stop them with keyagent --home DIR stop)")

"""Does a command open any connection that leaves the machine? Runs it under `strace -f` (every child
process included) recording connect/sendto/sendmsg, and lists the addresses that are not loopback.

    python -m bench.no_egress -- dvc repro -f -s export_onnx@winter
    python -m bench.no_egress --out bench/results/no_egress.json -- dvc repro

DNS lookups show up too (a connect to the resolver), so a run that only *tries* to reach a model hub is
caught even when the lookup fails. Needs `strace` (Debian: apt-get install strace).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_INET = re.compile(r'sin_addr=inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")


def available() -> bool:
    return shutil.which("strace") is not None


def parse(trace: str) -> list[dict]:
    """The IPv4/IPv6 destinations in an strace log, one entry per distinct (address, port, syscall)."""
    seen: dict[tuple, dict] = {}
    for line in trace.splitlines():
        m = _INET.search(line)
        if not m or not re.search(r"\b(connect|sendto|sendmsg)\(", line):
            continue
        addr = m.group(1) or m.group(2)
        port = _PORT.search(line)
        call = re.search(r"\b(connect|sendto|sendmsg)\(", line).group(1)
        key = (addr, int(port.group(1)) if port else None, call)
        entry = seen.setdefault(
            key, {"address": addr, "port": key[1], "call": call, "count": 0, "loopback": _loopback(addr)}
        )
        entry["count"] += 1
    return list(seen.values())


def _loopback(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def traced_run(
    cmd: list[str], cwd: Path | str = ".", env: dict | None = None
) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run `cmd` under strace; returns the finished process and the destinations it (or a child) used."""
    if not available():
        raise RuntimeError("strace is not installed (Debian: apt-get install strace)")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "trace"
        res = subprocess.run(
            [
                "strace",
                "-f",
                "-qq",
                "--seccomp-bpf",
                "-e",
                "trace=connect,sendto,sendmsg",
                "-e",
                "signal=none",
                "-o",
                str(log),
                *cmd,
            ],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        trace = log.read_text() if log.exists() else ""
    return res, parse(trace)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="Write the result as JSON here.")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="The command, after --.")
    args = ap.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give the command to check after --")
    t0 = time.perf_counter()
    res, dests = traced_run(cmd)
    outside = [d for d in dests if not d["loopback"]]
    result = {
        "command": " ".join(cmd),
        "exit_code": res.returncode,
        "seconds": round(time.perf_counter() - t0, 1),
        "destinations": dests,
        "left_the_machine": outside,
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    if res.returncode:
        print(res.stdout[-2000:] + res.stderr[-2000:], file=sys.stderr)
    return 1 if outside or res.returncode else 0


if __name__ == "__main__":
    sys.exit(main())

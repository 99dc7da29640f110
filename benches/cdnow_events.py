#!/usr/bin/env python3
"""Turn the CDNOW purchase history into churnwatch events, for `examples/evaluate.rs`.

CDNOW_master.txt (23,570 customers who first bought at the CDNOW online music store in
Q1 1997, every purchase until June 1998; Fader & Hardie) is the standard real data set of
the customer-base literature. It ships inside the `Lifetimes` wheel on PyPI; this script
downloads that wheel with pip (cached under ~/.cache/churnwatch), reads the file from it,
and writes one `purchase` event per line (amounts in USD, timestamps at noon UTC).
Dates are shifted by 28 years (1997 → 2025: the calendar repeats, weekdays and leap
days included) because churnwatch keeps event time from 2000 on.

    python3 benches/cdnow_events.py /tmp/cdnow.jsonl
    cargo run --release --example evaluate -- --events /tmp/cdnow.jsonl \
        --cutoff 2025-10-01T00:00:00Z --horizon 273d
"""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "Lifetimes==0.11.3"
MEMBER = "lifetimes/datasets/CDNOW_master.txt"
SHIFT_YEARS = 28


def wheel_path() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "churnwatch" / "wheels"
    found = sorted(cache.glob("Lifetimes-0.11.3-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache), WHEEL],
        check=True,
    )
    return sorted(cache.glob("Lifetimes-0.11.3-*.whl"))[0]


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: cdnow_events.py OUT.jsonl")
    out = Path(sys.argv[1])
    with zipfile.ZipFile(wheel_path()) as z:
        lines = z.read(MEMBER).decode().splitlines()
    rows = []
    for n, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        cust, date, cds, dollars = parts
        rows.append((date, cust, n, cds, dollars))
    rows.sort()
    with out.open("w") as f:
        for date, cust, n, cds, dollars in rows:
            ev = {
                "event_id": f"cdnow-{n}",
                "type": "purchase",
                "customer_id": f"cd{cust}",
                "occurred_at": f"{int(date[:4]) + SHIFT_YEARS}-{date[4:6]}-{date[6:]}T12:00:00Z",
                "order_id": f"o{n}",
                "amount": f"{float(dollars):.2f}",
                "currency": "USD",
                "categories": ["music"],
            }
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
    print(f"wrote {len(rows)} purchase events of {len({r[1] for r in rows})} customers to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

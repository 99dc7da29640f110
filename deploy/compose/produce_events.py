#!/usr/bin/env python3
"""Produces JSONL events into churnwatch's input topics, keyed by customer_id and
partitioned like a Java producer (murmur2), as README "Running the service (Kafka)" requires of co-partitioned
topics. Support events go to the support topic, everything else (and lines that are
not events) to the purchases topic, as the Kafka tests split the bundled example.

    pip install confluent-kafka==2.16.1
    python3 produce_events.py --bootstrap localhost:19092 examples/events.jsonl

Used by deploy/compose.yaml (service `producer`).
"""

import argparse
import json
import sys
import time

SUPPORT_TYPES = {"support_ticket_opened", "support_ticket_closed", "complaint", "satisfaction"}


def route(line, purchases, support):
    """(topic, key) of one JSONL line; malformed lines keep flowing to the purchases
    topic so that churnwatch dead-letters them."""
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        event = {}
    key = event.get("customer_id")
    key = key if isinstance(key, str) else None
    topic = support if event.get("type") in SUPPORT_TYPES else purchases
    return topic, key


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="JSONL event files, produced in order")
    ap.add_argument("--bootstrap", default="localhost:19092")
    ap.add_argument("--purchases-topic", default="shop.purchases")
    ap.add_argument("--support-topic", default="shop.support")
    ap.add_argument("--rate", type=float, default=0, help="events per second (0: as fast as the broker takes them)")
    args = ap.parse_args()

    from confluent_kafka import Producer  # imported here so --help works without it

    failed = []

    def delivered(err, _msg):
        if err is not None:
            failed.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            # The Java client's partitioner: churnwatch counts records whose partition
            # is not murmur2 of their key as misrouted.
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "enable.idempotence": True,
        }
    )
    sent = 0
    start = time.monotonic()
    for path in args.files:
        with open(path, "rb") as f:
            for raw in f:
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                topic, key = route(line, args.purchases_topic, args.support_topic)
                while True:
                    try:
                        producer.produce(topic, value=line, key=key, on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.1)
                producer.poll(0)
                sent += 1
                if args.rate > 0:
                    ahead = sent / args.rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
    left = producer.flush(120)
    if failed or left:
        sys.exit(f"{len(failed)} deliveries failed ({failed[:3]}), {left} not delivered")
    print(f"produced {sent} records to {args.purchases_topic} and {args.support_topic}")


if __name__ == "__main__":
    main()

"""Receive and acknowledge messages from wasmq with the official RocketMQ 5 Python
client's SimpleConsumer, unchanged.

    pip install -r tests/python/requirements.txt
    python examples/python/consumer.py --endpoint 127.0.0.1:8081 --topic TestTopic \
        --group GID_example --filter "TagA || TagB" --seconds 30

Messages not acknowledged within --invisible-seconds are delivered again (with the
delivery attempt incremented); after 16 attempts they move to %DLQ%<group>.
"""

import argparse
import logging
import time

from rocketmq import (ClientConfiguration, Credentials, FilterExpression,
                      SimpleConsumer)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="127.0.0.1:8081", help="broker client endpoint(s), host:port[;host:port]")
    parser.add_argument("--topic", default="TestTopic")
    parser.add_argument("--group", default="GID_example")
    parser.add_argument("--filter", default="*", help="tag expression: *, TagA, TagA || TagB")
    parser.add_argument("--seconds", type=float, default=30.0, help="stop after this long")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--invisible-seconds", type=int, default=30)
    parser.add_argument("--access-key", default="")
    parser.add_argument("--secret-key", default="")
    args = parser.parse_args()
    if not 1 <= args.batch <= 32:
        parser.error("--batch must be 1..=32")
    logging.basicConfig(level=logging.WARNING)

    config = ClientConfiguration(args.endpoint, Credentials(args.access_key, args.secret_key))
    consumer = SimpleConsumer(config, args.group, {args.topic: FilterExpression(args.filter)}, await_duration=5)
    consumer.startup()
    received = 0
    try:
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            for msg in consumer.receive(args.batch, args.invisible_seconds) or []:
                print(
                    f"received message_id={msg.message_id} tag={msg.tag} keys={sorted(msg.keys)} "
                    f"properties={msg.properties} attempt={msg.delivery_attempt} body={msg.body!r}"
                )
                consumer.ack(msg)
                received += 1
    finally:
        consumer.shutdown()
    print(f"received and acked {received} messages")


if __name__ == "__main__":
    main()

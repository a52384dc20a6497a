"""Send messages to wasmq with the official RocketMQ 5 Python client, unchanged.

    pip install -r tests/python/requirements.txt
    python examples/python/producer.py --endpoint 127.0.0.1:8081 --topic TestTopic --count 10

The topic must exist (create it with mqadmin). Each message gets a tag, two keys and
a user property; the printed message id and queue offset come from the broker.
"""

import argparse
import logging

from rocketmq import ClientConfiguration, Credentials, Message, Producer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="127.0.0.1:8081", help="broker client endpoint(s), host:port[;host:port]")
    parser.add_argument("--topic", default="TestTopic")
    parser.add_argument("--tag", default="TagA")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--access-key", default="")
    parser.add_argument("--secret-key", default="")
    args = parser.parse_args()
    if not 1 <= args.count <= 1_000_000:
        parser.error("--count must be 1..=1000000")
    logging.basicConfig(level=logging.WARNING)

    config = ClientConfiguration(args.endpoint, Credentials(args.access_key, args.secret_key))
    producer = Producer(config, (args.topic,))
    producer.startup()
    try:
        for i in range(args.count):
            msg = Message()
            msg.topic = args.topic
            msg.body = f"hello wasmq {i}".encode()
            msg.tag = args.tag
            msg.keys = f"order-{i}"
            msg.keys = "example"
            msg.add_property("index", str(i))
            receipt = producer.send(msg)
            print(f"sent {i}: message_id={receipt.message_id} offset={receipt.offset}")
    finally:
        producer.shutdown()


if __name__ == "__main__":
    main()

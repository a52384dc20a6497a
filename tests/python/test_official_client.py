"""The official RocketMQ 5 Python client (rocketmq-python-client) against wasmq, unchanged.

Environment (set by the cluster harness, or by the Rust test
`messaging::python_wire_tests` that serves the v2 service over an in-memory backend):

- WASMQ_ENDPOINT       client endpoint(s), `host:port[;host:port...]` (required; else skipped)
- WASMQ_TOPIC          an existing NORMAL topic (default `wasmq-py`)
- WASMQ_MESSAGES       messages for the round-trip test (default 1000)
- WASMQ_FAILOVER_CMD   shell command that kills (or demotes) the current leader; enables
                       the failover test
- WASMQ_RECOVER_CMD    shell command run after the failover test (e.g. restart the node)

Every loop is bounded in count and time. All traffic stays on the given endpoint.
"""

import os
import pathlib
import subprocess
import sys
import threading
import time
import uuid

import grpc
import pytest
from rocketmq import (ClientConfiguration, ConsumeResult, Credentials,
                      FilterExpression, Message, MessageListener, Producer,
                      PushConsumer, SimpleConsumer)
from rocketmq.grpc_protocol import definition_pb2, service_pb2, service_pb2_grpc
from rocketmq.v5.exception import BadRequestException, ClientException

ENDPOINT = os.environ.get("WASMQ_ENDPOINT", "")
TOPIC = os.environ.get("WASMQ_TOPIC", "wasmq-py")
MESSAGES = int(os.environ.get("WASMQ_MESSAGES", "1000"))
RECEIVE_SECONDS_MAX = 180
INVISIBLE_SECONDS = 30

pytestmark = pytest.mark.skipif(not ENDPOINT, reason="WASMQ_ENDPOINT is not set")


def config():
    return ClientConfiguration(ENDPOINT, Credentials(), request_timeout=10)


def new_run():
    return uuid.uuid4().hex[:12]


def started(client):
    client.startup()
    return client


def make_message(run, i):
    m = Message()
    m.topic = TOPIC
    # Binary-safe body: run id, index and every byte value.
    m.body = f"{run}:{i}:".encode() + bytes(range(256))
    m.tag = "TagA" if i % 2 == 0 else "TagB"
    m.keys = f"key-{i}"
    m.keys = f"run-{run}"
    m.add_property("run", run)
    m.add_property("i", str(i))
    m.add_property("unicode", "wasmq-ü-✓")
    return m


def check_message(run, m):
    """Validates one received message of `run`; returns its index."""
    i = int(m.properties["i"])
    assert m.body == f"{run}:{i}:".encode() + bytes(range(256))
    assert m.tag == "TagA" and i % 2 == 0, f"filter leaked tag {m.tag} index {i}"
    assert set(m.keys) == {f"key-{i}", f"run-{run}"}
    assert m.properties["unicode"] == "wasmq-ü-✓"
    assert m.topic == TOPIC
    assert not m.corrupted, "body digest mismatch"
    return i


def receive_run(consumer, run, wanted, allow_duplicates, on_batch=None):
    """Receives and acks until all `wanted` indexes of `run` arrived (bounded)."""
    got, duplicates = set(), 0
    deadline = time.monotonic() + RECEIVE_SECONDS_MAX
    while got != wanted and time.monotonic() < deadline:
        try:
            batch = consumer.receive(32, INVISIBLE_SECONDS)
        except Exception:  # noqa: BLE001 - during failover gRPC errors surface raw too
            if not allow_duplicates:
                raise
            time.sleep(0.5)
            continue
        for m in batch or []:
            if m.properties.get("run") == run:
                i = check_message(run, m)
                if i in got:
                    duplicates += 1
                got.add(i)
            try:
                consumer.ack(m)
            except Exception:  # noqa: BLE001 - see above; an unacked message comes back
                if not allow_duplicates:
                    raise
        if on_batch:
            on_batch(len(got))
    return got, duplicates


def test_round_trip_with_tag_filter():
    run = new_run()
    group = f"GID_py_{run}"
    producer = started(Producer(config(), (TOPIC,)))
    consumer = started(SimpleConsumer(config(), group, {TOPIC: FilterExpression("TagA")}, await_duration=5))
    try:
        receipts = [producer.send(make_message(run, i)) for i in range(MESSAGES)]
        assert len({r.message_id for r in receipts}) == MESSAGES
        wanted = {i for i in range(MESSAGES) if i % 2 == 0}
        got, duplicates = receive_run(consumer, run, wanted, allow_duplicates=False)
        assert got == wanted, f"missing {sorted(wanted - got)[:20]}"
        assert duplicates == 0
        # Everything is acked: nothing comes back once the invisibility would end.
        assert not [m for m in consumer.receive(32, INVISIBLE_SECONDS) or [] if m.properties.get("run") == run]
    finally:
        consumer.shutdown()
        producer.shutdown()


def test_send_to_unknown_topic_fails_clearly():
    missing = f"wasmq-missing-{new_run()}"
    producer = started(Producer(config()))
    try:
        m = Message()
        m.topic = missing
        m.body = b"x"
        # The client wraps the route failure (it logs the server's 40402 text).
        with pytest.raises(Exception, match="route"):
            producer.send(m)
    finally:
        producer.shutdown()
    resp = raw_stub().QueryRoute(
        service_pb2.QueryRouteRequest(topic=definition_pb2.Resource(name=missing)), metadata=raw_metadata(), timeout=10)
    assert resp.status.code == definition_pb2.Code.TOPIC_NOT_FOUND
    msg = definition_pb2.Message(body=b"x")
    msg.topic.name = missing
    msg.system_properties.message_id = f"missing-{new_run()}"
    resp = raw_stub().SendMessage(service_pb2.SendMessageRequest(messages=[msg]), metadata=raw_metadata(), timeout=10)
    assert resp.status.code == definition_pb2.Code.TOPIC_NOT_FOUND


def test_oversize_message_is_refused_by_client_and_server():
    producer = started(Producer(config(), (TOPIC,)))
    try:
        limit = raw_settings_max_body_size()
        assert limit > 0
        m = Message()
        m.topic = TOPIC
        m.body = b"x" * (limit + 1)
        # The client learned the server's limit from Telemetry and refuses locally...
        with pytest.raises(ClientException):
            producer.send(m)
    finally:
        producer.shutdown()
    # ...and the server refuses it too when a client does not check.
    msg = definition_pb2.Message()
    msg.topic.name = TOPIC
    msg.system_properties.message_id = f"oversize-{new_run()}"
    msg.system_properties.message_type = definition_pb2.MessageType.NORMAL
    msg.body = b"x" * (limit + 1)
    resp = raw_stub().SendMessage(service_pb2.SendMessageRequest(messages=[msg]), metadata=raw_metadata(), timeout=30)
    assert resp.status.code == definition_pb2.Code.MESSAGE_BODY_TOO_LARGE, resp.status


def test_wrong_receipt_handle_is_rejected_and_message_survives():
    run = new_run()
    group = f"GID_py_bad_{run}"
    producer = started(Producer(config(), (TOPIC,)))
    consumer = started(SimpleConsumer(config(), group, {TOPIC: FilterExpression("*")}, await_duration=5))
    try:
        producer.send(make_message(run, 0))
        deadline = time.monotonic() + 60
        target = None
        while target is None and time.monotonic() < deadline:
            for m in consumer.receive(16, 2) or []:
                if m.properties.get("run") == run:
                    target = m
                else:
                    consumer.ack(m)
        assert target is not None, "message not received"
        good = target.receipt_handle
        for bad in ["not-a-handle", good[:-2], good[:-1] + ("0" if good[-1] != "0" else "1")]:
            target.receipt_handle = bad
            with pytest.raises(BadRequestException) as e:
                consumer.ack(target)
            assert e.value.code == definition_pb2.Code.INVALID_RECEIPT_HANDLE
        # Not acked: after its 2 s invisibility it is delivered again, attempt 2.
        again = None
        deadline = time.monotonic() + 60
        while again is None and time.monotonic() < deadline:
            for m in consumer.receive(16, 30) or []:
                if m.properties.get("run") == run:
                    again = m
                consumer.ack(m)
        assert again is not None, "unacked message was not redelivered"
        assert again.delivery_attempt == 2
    finally:
        consumer.shutdown()
        producer.shutdown()


def test_push_consumer_gets_settings_retries_failures_and_consumes_all():
    """PushConsumer needs the Settings answer to start; a FAILURE is retried later."""
    run = new_run()
    tag = f"Push{run}"
    count = 50
    seen, attempts, lock = set(), {}, threading.Lock()

    class Listener(MessageListener):
        def consume(self, message):
            if message.properties.get("run") != run:
                return ConsumeResult.SUCCESS
            i = int(message.properties["i"])
            with lock:
                attempts[i] = max(attempts.get(i, 0), message.delivery_attempt)
                # Index 0 fails on its first delivery: it must come back.
                if i == 0 and message.delivery_attempt == 1:
                    return ConsumeResult.FAILURE
                seen.add(i)
            return ConsumeResult.SUCCESS

    consumer = PushConsumer(config(), f"GID_py_push_{run}", Listener(), {TOPIC: FilterExpression(tag)})
    consumer.startup()  # raises if no Settings answer arrives within 10 s
    producer = started(Producer(config(), (TOPIC,)))
    try:
        for i in range(count):
            m = make_message(run, i)
            m.tag = tag
            producer.send(m)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with lock:
                if len(seen) == count:
                    break
            time.sleep(0.2)
        with lock:
            assert seen == set(range(count)), f"missing {sorted(set(range(count)) - seen)[:20]}"
            assert attempts[0] >= 2, "failed message was not redelivered"
    finally:
        producer.shutdown()
        consumer.shutdown()


def test_examples_run():
    run = new_run()
    tag = f"Ex{run}"
    examples = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python"
    sent = subprocess.run(
        [sys.executable, str(examples / "producer.py"), "--endpoint", ENDPOINT, "--topic", TOPIC, "--tag", tag, "--count", "5"],
        capture_output=True, text=True, timeout=120, check=True)
    assert sent.stdout.count("sent ") == 5, sent.stdout
    got = subprocess.run(
        [sys.executable, str(examples / "consumer.py"), "--endpoint", ENDPOINT, "--topic", TOPIC, "--group",
         f"GID_py_ex_{run}", "--filter", tag, "--seconds", "8"],
        capture_output=True, text=True, timeout=120, check=True)
    assert "received and acked 5 messages" in got.stdout, got.stdout


@pytest.mark.skipif(not os.environ.get("WASMQ_FAILOVER_CMD"), reason="WASMQ_FAILOVER_CMD is not set")
def test_failover_keeps_every_message():
    """Kill the leader mid-stream: every sent message is received (at least once)."""
    run = new_run()
    group = f"GID_py_fo_{run}"
    producer = started(Producer(config(), (TOPIC,)))
    consumer = started(SimpleConsumer(config(), group, {TOPIC: FilterExpression("TagA")}, await_duration=5))
    sent = set()
    try:
        def send_bounded(i):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    producer.send(make_message(run, i))
                    return True
                except Exception:  # noqa: BLE001 - retried until the new leader answers
                    time.sleep(0.5)
            return False

        half = MESSAGES // 2
        for i in range(half):
            assert send_bounded(i)
            sent.add(i)
        subprocess.run(os.environ["WASMQ_FAILOVER_CMD"], shell=True, check=True, timeout=120)
        for i in range(half, MESSAGES):
            assert send_bounded(i), f"send {i} failed for 60 s after failover"
            sent.add(i)
        wanted = {i for i in sent if i % 2 == 0}
        got, _duplicates = receive_run(consumer, run, wanted, allow_duplicates=True)
        assert got == wanted, f"lost {sorted(wanted - got)[:20]}"
    finally:
        consumer.shutdown()
        producer.shutdown()
        if os.environ.get("WASMQ_RECOVER_CMD"):
            subprocess.run(os.environ["WASMQ_RECOVER_CMD"], shell=True, check=True, timeout=120)


# --- raw gRPC (the client package's own generated stubs) for server-side checks ---

def raw_target():
    return ENDPOINT.split(";")[0]


def raw_stub():
    channel = grpc.insecure_channel(raw_target(), options=[("grpc.max_receive_message_length", 64 << 20)])
    return service_pb2_grpc.MessagingServiceStub(channel)


def raw_metadata():
    return [("x-mq-client-id", f"wasmq-test-{new_run()}"), ("x-mq-language", "PYTHON"), ("x-mq-protocol", "v2")]


def raw_settings_max_body_size():
    settings = definition_pb2.Settings()
    settings.client_type = definition_pb2.ClientType.PRODUCER
    settings.publishing.topics.add(name=TOPIC)
    cmds = iter([service_pb2.TelemetryCommand(settings=settings)])
    call = raw_stub().Telemetry(cmds, metadata=raw_metadata(), timeout=10)
    for answer in call:
        if answer.HasField("settings"):
            call.cancel()
            return answer.settings.publishing.max_body_size
    raise AssertionError("no Settings answer on Telemetry")


def test_raw_client_id_is_required_and_unsupported_rpcs_say_so():
    stub = raw_stub()
    resp = stub.QueryRoute(service_pb2.QueryRouteRequest(topic=definition_pb2.Resource(name=TOPIC)), timeout=10)
    assert resp.status.code == definition_pb2.Code.CLIENT_ID_REQUIRED
    resp = stub.EndTransaction(service_pb2.EndTransactionRequest(), metadata=raw_metadata(), timeout=10)
    assert resp.status.code == definition_pb2.Code.UNSUPPORTED

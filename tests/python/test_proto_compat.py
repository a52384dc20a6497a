"""Wire compatibility of wasmq's apache.rocketmq.v2 .proto files with the official client.

Compiles host/proto/proto/apache/rocketmq/v2/*.proto with grpc_tools.protoc into a
descriptor set and compares every message field (number, name, label, type, oneof),
enum value and RPC (types, streaming kinds) with the descriptors that ship inside the
official Python client (rocketmq-python-client). Any drift fails with the differences.
"""

import pathlib
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2

REPO = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO / "host" / "proto" / "proto"
OUR_FILES = ["apache/rocketmq/v2/definition.proto", "apache/rocketmq/v2/service.proto"]


def _shape(files):
    """Flatten FileDescriptorProtos into comparable {kind:name -> description} entries."""
    shape = {}

    def message(prefix, m):
        name = f"{prefix}.{m.name}"
        for f in m.field:
            oneof = m.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else ""
            # Synthetic oneofs of proto3 `optional` fields are named after the field by
            # every protoc; keep them, they are part of the descriptor contract.
            shape[f"field:{name}.{f.number}"] = (
                f.name, f.label, f.type, f.type_name, f.proto3_optional, oneof)
        for e in m.enum_type:
            enum(name, e)
        for n in m.nested_type:
            message(name, n)

    def enum(prefix, e):
        for v in e.value:
            shape[f"enum:{prefix}.{e.name}.{v.number}"] = v.name

    for fd in files:
        prefix = "." + fd.package
        for m in fd.message_type:
            message(prefix, m)
        for e in fd.enum_type:
            enum(prefix, e)
        for s in fd.service:
            for meth in s.method:
                shape[f"rpc:{prefix}.{s.name}.{meth.name}"] = (
                    meth.input_type, meth.output_type,
                    meth.client_streaming, meth.server_streaming)
    return shape


def _official():
    from rocketmq.grpc_protocol import definition_pb2, service_pb2
    files = []
    for mod in (definition_pb2, service_pb2):
        fd = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(fd)
        files.append(fd)
    return _shape(files)


def _ours():
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "set.pb"
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
             f"--descriptor_set_out={out}", *OUR_FILES],
            check=True)
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return _shape([f for f in fds.file if f.package == "apache.rocketmq.v2"])


def test_our_proto_matches_official_client_descriptors():
    official, ours = _official(), _ours()
    assert len(official) > 300, "official descriptors look truncated"
    missing = sorted(set(official) - set(ours))
    extra = sorted(set(ours) - set(official))
    differ = sorted(k for k in set(official) & set(ours) if official[k] != ours[k])
    assert not missing, f"missing in ours: {missing}"
    assert not extra, f"not in the official client: {extra}"
    assert not differ, "differ: " + "; ".join(f"{k}: ours={ours[k]} official={official[k]}" for k in differ)

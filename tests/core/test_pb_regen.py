"""The committed protobuf code is exactly what the pinned protoc generates from proto/ today."""

from __future__ import annotations

from pathlib import Path

from agent.pb import regen


def test_every_proto_is_regenerated_byte_for_byte(tmp_path: Path) -> None:
    protos = regen.proto_files()
    assert Path("status/protocol_message.proto") in protos
    written = regen.generate(tmp_path)
    # every .proto under proto/ yields a module (covers files other engineers add later)
    for proto in protos:
        stem = proto.with_suffix("")
        assert stem.with_name(stem.name + "_pb2.py") in written, proto
    for rel in written:
        committed = regen.PB_ROOT / rel
        assert committed.is_file(), f"{rel} generated but not committed"
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), f"{rel} differs: run python -m agent.pb.regen"
    # no stale generated module left behind for a removed .proto
    committed_gen = {p.relative_to(regen.PB_ROOT) for p in regen.PB_ROOT.rglob("*_pb2.py*")}
    assert committed_gen == {r for r in written if "_pb2" in r.name}


def test_generated_modules_import() -> None:
    from agent.pb.status import protocol_message_pb2 as pm

    assert pm.ProtocolMessage.DESCRIPTOR.fields_by_name["encrypted_message"].number == 101
    assert pm.EncryptedMessageProtocol.DESCRIPTOR.fields_by_name["DH_header"].number == 101
    assert pm.EncryptedMessageProtocol.DESCRIPTOR.fields_by_name["HR_header"].number == 102
    assert pm.SignedPreKey.DESCRIPTOR.fields_by_name["protocol_version"].number == 3
    assert pm.Bundle.DESCRIPTOR.fields_by_name["timestamp"].number == 5


def test_a_proto_importing_another_gets_package_imports(tmp_path: Path) -> None:
    """A later proto (e.g. proto/keyagent/agent.proto) that imports ours must generate importable code."""
    import importlib.util
    import shutil

    root = tmp_path / "proto"
    shutil.copytree(regen.PROTO_ROOT / "status", root / "status")
    (root / "extra").mkdir()
    (root / "extra" / "uses_status.proto").write_text(
        'syntax = "proto3";\npackage regen_probe;\nimport "status/protocol_message.proto";\n'
        "message Wrapper { encryption.Bundle bundle = 1; }\n"
    )
    out = tmp_path / "out"
    written = regen.generate(out, proto_root=root)
    assert Path("extra/uses_status_pb2.py") in written and Path("extra/__init__.py") in written
    text = (out / "extra" / "uses_status_pb2.py").read_text()
    assert "from agent.pb.status import protocol_message_pb2" in text
    spec = importlib.util.spec_from_file_location("regen_probe_mod", out / "extra" / "uses_status_pb2.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    w = mod.Wrapper()
    w.bundle.identity = b"\x02" * 33
    assert mod.Wrapper.FromString(w.SerializeToString()).bundle.identity == b"\x02" * 33

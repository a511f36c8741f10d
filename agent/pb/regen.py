"""Regenerate the committed protobuf Python code from every ``proto/**/*.proto``.

Run ``python -m agent.pb.regen`` after editing a .proto. Code is generated with the pinned
``grpcio-tools`` protoc (pyproject) so that the regeneration test can compare byte for byte; imports
between generated modules are rewritten to absolute ``agent.pb.…`` imports, because protoc emits
``from status import x_pb2``, which only works with ``proto/``'s layout on ``sys.path``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["PROTO_ROOT", "PB_ROOT", "proto_files", "generate", "main"]

PB_ROOT = Path(__file__).resolve().parent
PROTO_ROOT = PB_ROOT.parent.parent / "proto"
PACKAGE = "agent.pb"
INIT_TEXT = '"""Generated protobuf modules (see agent/pb/regen.py); do not edit."""\n'


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """Every .proto under ``root``, as paths relative to it, in a stable order."""
    return sorted(p.relative_to(root) for p in root.rglob("*.proto"))


def _rewrite_imports(text: str, top_names: set[str]) -> str:
    """Turn protoc's ``from <dir> import x_pb2`` / ``import x_pb2`` into imports under agent.pb."""
    def fix_from(m: re.Match[str]) -> str:
        mod = m.group(2)
        head = mod.split(".")[0]
        return f"{m.group(1)}from {PACKAGE}.{mod} import" if head in top_names else m.group(0)

    text = re.sub(r"^(\s*)from ([A-Za-z_][\w.]*) import", fix_from, text, flags=re.M)

    def fix_plain(m: re.Match[str]) -> str:
        mod = m.group(2)
        return f"{m.group(1)}from {PACKAGE} import {mod} as" if mod in top_names else m.group(0)

    return re.sub(r"^(\s*)import ([A-Za-z_]\w*_pb2) as", fix_plain, text, flags=re.M)


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Generate Python + .pyi for all protos into ``out_dir``; return the written files (relative)."""
    from grpc_tools import protoc  # test/dev dependency only

    files = proto_files(proto_root)
    if not files:
        raise SystemExit(f"no .proto files under {proto_root}")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            *[str(f) for f in files],
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        generated = sorted(p.relative_to(tmp) for p in Path(tmp).rglob("*") if p.is_file())
        top_names = {p.parts[0] if len(p.parts) > 1 else p.stem for p in generated}
        written: list[Path] = []
        for rel in generated:
            text = (Path(tmp) / rel).read_text(encoding="utf-8")
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(_rewrite_imports(text, top_names), encoding="utf-8")
            written.append(rel)
        # every generated sub-package needs an __init__.py to be importable
        for d in sorted({rel.parent for rel in generated if rel.parent != Path(".")}):
            for i in range(1, len(d.parts) + 1):
                init = Path(*d.parts[:i]) / "__init__.py"
                if init not in written:
                    (out_dir / init).write_text(INIT_TEXT, encoding="utf-8")
                    written.append(init)
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    """Regenerate into agent/pb (or --out), removing stale generated files first."""
    ap = argparse.ArgumentParser(prog="python -m agent.pb.regen", description=__doc__)
    ap.add_argument("--out", type=Path, default=PB_ROOT)
    args = ap.parse_args(argv)
    out: Path = args.out
    for sub in [p for p in out.iterdir() if p.is_dir() and p.name != "__pycache__"]:
        shutil.rmtree(sub)  # generated sub-packages only; regen.py and __init__.py stay
    for stale in out.glob("*_pb2.py*"):
        stale.unlink()
    for rel in generate(out):
        print(rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())

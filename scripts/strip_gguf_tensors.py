#!/usr/bin/env python3
"""Copy a GGUF file's metadata into a new GGUF file that has no tensors.

Usage: strip_gguf_tensors.py SRC DST

Every metadata key/value of SRC is written to DST with its own type (arrays
keep their element type), in SRC's order; the tensor infos and tensor data are
dropped. SRC may be truncated (a partial download): only its header is read.
The result loads vocab-only in llama.cpp (tokenizer and chat template).

After writing, DST is read back and every key is compared byte for byte with
SRC; any difference is an error (exit 1).

Needs the `gguf` package (gguf-py from llama.cpp), run from a venv that has it.
"""

from __future__ import annotations

import os
import sys

import gguf
from gguf import GGUFValueType


class HeaderOnlyReader(gguf.GGUFReader):
    """A GGUFReader that parses tensor infos but never maps tensor data.

    The stock reader maps every tensor's data and fails on a truncated file
    ("cannot reshape array ..."); the header alone is all we need.
    """

    def _build_tensors(self, start_offs, fields):  # noqa: D401 (overrides a private hook)
        self.tensor_info_count = len(fields)
        self.tensors = []


def is_virtual(name: str) -> bool:
    # GGUF.version, GGUF.tensor_count, GGUF.kv_count: the reader's view of the
    # file header, not key/values.
    return name.startswith("GGUF.")


def field_value(field):
    """The value of a field in the form GGUFWriter.add_key_value takes.

    Strings are passed as raw bytes so they are copied exactly, never
    re-encoded.
    """
    main_type = field.types[0]
    if main_type == GGUFValueType.STRING:
        return bytes(field.parts[-1])
    if main_type == GGUFValueType.ARRAY:
        sub_type = field.types[-1]
        if len(field.types) != 2:
            raise ValueError(f"{field.name}: nested arrays are not supported")
        if sub_type == GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data]
        return [v for i in field.data for v in field.parts[i].tolist()]
    return field.parts[-1].tolist()[0]


def raw_field_bytes(field) -> bytes:
    # key length, key, value type, value parts: the field exactly as on disk.
    return b"".join(part.tobytes() for part in field.parts)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    src, dst = sys.argv[1], sys.argv[2]

    reader = HeaderOnlyReader(src, "r")
    fields = [f for f in reader.fields.values() if not is_virtual(f.name)]
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise ValueError(f"{src}: no {gguf.Keys.General.ARCHITECTURE} key")
    arch = bytes(arch_field.parts[-1]).decode("utf-8")

    writer = gguf.GGUFWriter(dst, arch=arch, endianess=reader.endianess)
    # GGUFWriter adds general.architecture itself, first. Keep SRC's order when
    # SRC also has it first (the usual case): then the key/value section is
    # byte-identical to SRC's.
    for field in fields:
        if field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == GGUFValueType.ARRAY else None
        value = field_value(field)
        if main_type == GGUFValueType.ARRAY and len(value) == 0:
            # GGUFWriter refuses empty arrays; say so rather than drop a key.
            raise ValueError(f"{src}: {field.name} is an empty array, which GGUFWriter cannot write")
        writer.add_key_value(field.name, value, main_type, sub_type=sub_type)

    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = int(alignment.parts[-1][0])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()  # no tensors: tensor-info section empty, padding only
    writer.close()

    # Read back and compare every key byte for byte.
    out = gguf.GGUFReader(dst, "r")
    if len(out.tensors) != 0:
        raise ValueError(f"{dst}: expected 0 tensors, found {len(out.tensors)}")
    out_fields = {f.name: f for f in out.fields.values() if not is_virtual(f.name)}
    src_names = [f.name for f in fields]
    missing = [n for n in src_names if n not in out_fields]
    extra = [n for n in out_fields if n not in src_names]
    changed = [f.name for f in fields
               if f.name in out_fields and raw_field_bytes(f) != raw_field_bytes(out_fields[f.name])]
    if missing or extra or changed:
        raise ValueError(f"{dst}: metadata differs from {src}: "
                         f"missing {missing}, extra {extra}, changed {changed}")

    print(f"{os.path.basename(dst)}: {len(out_fields)} metadata keys (architecture {arch}), "
          f"0 tensors (dropped {reader.tensor_info_count} tensor infos)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write a higher-precision copy of a quantized GGUF (F16, F32 or Q8_0 matrices, F32 vectors).

The speculative-decoding benchmark (issue 5) needs a pair that shares a vocabulary: a precise
target and a cheap draft. The only small model shipped is SmolLM2-135M in Q4_1, so the target is
that file dequantized (same weights as the draft up to Q4_1 rounding, hence high acceptance):

    python benchmarks/dequantize_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smol-f16.gguf
"""

from __future__ import annotations

import sys

import gguf
import numpy as np
from gguf.quants import dequantize, quantize


def convert(src: str, dst: str, target: str = "F16") -> None:
    reader = gguf.GGUFReader(src)
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    writer = gguf.GGUFWriter(dst, arch)
    qtype = gguf.GGMLQuantizationType[target]
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if field.name == gguf.Keys.General.FILE_TYPE:
            value = int(
                {"F16": gguf.LlamaFileType.MOSTLY_F16, "F32": gguf.LlamaFileType.ALL_F32}.get(
                    target, gguf.LlamaFileType.MOSTLY_Q8_0
                )
            )
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, vtype, sub_type=sub)
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        if data.ndim >= 2:
            if target in ("F16", "F32"):
                writer.add_tensor(t.name, data.astype(np.float16 if target == "F16" else np.float32))
            else:
                writer.add_tensor(t.name, quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "F16")

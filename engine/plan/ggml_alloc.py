"""A port of ggml-alloc's dynamic allocator (`ggml_dyn_tallocr`, ggml/src/ggml-alloc.c, 0c1e570).

llama.cpp sizes each compute buffer by planning every tensor of the worst-case graph into one
virtual buffer and keeping the high-water mark (`max_size`). Where a tensor lands depends on
the free blocks left by the tensors freed before it, so a buffer's size is not the peak of
the live bytes: a large tensor that fits no hole goes past the end. This port follows the C
code step for step: sizes are padded to the alignment, the best-fitting free block other than
the last one is taken (ties go to the later block, `<=`), else the last block (which reaches
to the end of the virtual buffer); freed bytes merge with the neighbouring free blocks.
One chunk is modelled: CUDA's maximum buffer size is far above any compute buffer.
"""

from __future__ import annotations

_END = 1 << 62  # the last free block reaches to the end of the (virtual) buffer


class DynAllocator:
    """Offsets for allocations and frees, and the resulting buffer size (`max_size`)."""

    def __init__(self, alignment: int = 128) -> None:
        self.alignment = alignment
        self.blocks: list[list[int]] = [[0, _END]]  # [offset, size], sorted by offset
        self.max_size = 0

    def _pad(self, size: int) -> int:
        return -(-size // self.alignment) * self.alignment

    def alloc(self, size: int) -> int:
        size = self._pad(size)
        best, best_size = -1, _END << 1
        for i in range(len(self.blocks) - 1):
            bsize = self.blocks[i][1]
            if size <= bsize <= best_size:
                best, best_size = i, bsize
        if best == -1:
            best = len(self.blocks) - 1
        block = self.blocks[best]
        offset = block[0]
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del self.blocks[best]
        self.max_size = max(self.max_size, offset + size)
        return offset

    def free(self, offset: int, size: int) -> None:
        size = self._pad(size)
        b = self.blocks
        for i, block in enumerate(b):
            if block[0] + block[1] == offset:  # the freed bytes follow this block
                block[1] += size
                if i + 1 < len(b) and block[0] + block[1] == b[i + 1][0]:
                    block[1] += b[i + 1][1]
                    del b[i + 1]
                return
            if offset + size == block[0]:  # ... or precede it
                block[0] = offset
                block[1] += size
                if i > 0 and b[i - 1][0] + b[i - 1][1] == block[0]:
                    b[i - 1][1] += block[1]
                    del b[i]
                return
        pos = 0
        while pos < len(b) and b[pos][0] < offset:
            pos += 1
        b.insert(pos, [offset, size])

"""engine.plan.ggml_alloc follows ggml-alloc's dynamic allocator (ggml_dyn_tallocr) step by step."""

from __future__ import annotations

from engine.plan.ggml_alloc import DynAllocator


def test_sizes_are_padded_to_the_alignment():
    a = DynAllocator(alignment=128)
    assert a.alloc(1) == 0
    assert a.alloc(1) == 128
    assert a.max_size == 256


def test_a_freed_block_is_reused_by_the_best_fitting_tensor():
    a = DynAllocator(alignment=1)
    x, y, z = a.alloc(100), a.alloc(50), a.alloc(10)
    a.free(x, 100)
    a.free(z, 10)  # merges into the last block, which reaches to the end
    assert a.alloc(40) == x  # the only free block besides the last one
    assert a.max_size == 160
    del y


def test_ties_go_to_the_later_block_and_neighbours_merge():
    a = DynAllocator(alignment=1)
    p = [a.alloc(10) for _ in range(5)]
    a.free(p[0], 10)
    a.free(p[2], 10)
    assert a.alloc(10) == p[2]  # `<=`: the later of two equal blocks
    a.free(p[2], 10)
    a.free(p[1], 10)  # [0, 30) is free again, in one block
    assert a.alloc(30) == 0
    assert a.max_size == 50


def test_a_tensor_that_fits_no_hole_goes_past_the_end():
    a = DynAllocator(alignment=1)
    big, small = a.alloc(100), a.alloc(10)
    a.free(big, 100)
    assert a.alloc(120) == 110  # the hole of 100 is too small: the buffer grows
    assert a.max_size == 230
    del small

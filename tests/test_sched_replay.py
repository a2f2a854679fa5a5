"""engine.plan.sched_replay splits, copies and allocates a graph as ggml-backend's scheduler and
ggml-alloc do (ggml-backend.cpp pass 5 and the graph copy, ggml-alloc.c's graph allocator)."""

from __future__ import annotations

from engine.plan.sched_replay import CPU, INPUT, W_CPU, W_GPU, Graph, gpu_buffer_size


def test_each_host_weight_gets_its_own_split_so_its_copy_is_reused():
    g = Graph()
    x = g.node(10)
    a = g.node(10, g.leaf(100, W_CPU), x)  # copy 1 at 10, a at 110; x and copy 1 freed
    g.node(10, g.leaf(100, W_CPU), a)  # a new split: copy 2 reuses [0, 100), b the hole at 100
    assert gpu_buffer_size(g, alignment=1) == 120


def test_a_graph_input_is_copied_once_and_kept_until_its_last_reader():
    g = Graph()
    pos = g.leaf(5, INPUT)
    a = g.node(10, pos)
    b = g.node(10, a, g.leaf(1000, W_GPU), pos)  # GPU weights are not copied
    g.node(10, b, pos)
    # pos copy [0, 5), a [5, 15), b [15, 25), then the last node reuses a's block
    assert gpu_buffer_size(g, alignment=1) == 25


def test_in_place_ops_reuse_a_source_with_no_other_reader():
    g = Graph()
    a = g.node(10)
    b = g.node(10, a, inplace=True)
    g.node(10, b, inplace=True)
    assert gpu_buffer_size(g, alignment=1) == 10
    g2 = Graph()
    a = g2.node(10)
    b = g2.node(10, a, inplace=True)  # a is still read below: no reuse
    g2.node(10, a, b)
    assert gpu_buffer_size(g2, alignment=1) == 30


def test_a_host_node_frees_its_gpu_source_at_the_start_of_its_split():
    g = Graph()
    k = g.node(50)
    g.node(0, k, backend=CPU)  # set_rows into a host cache: K is copied out, then freed
    g.node(50)  # reuses K's block
    assert gpu_buffer_size(g, alignment=1) == 50

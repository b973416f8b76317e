"""The meta-device cost trace: FLOPs and live-tensor peaks that could be wrong in either direction."""

import torch
import torch.nn.functional as F  # noqa: N812

from volsynth.models.costing import parameter_bytes, trace_cost

MB = 1 << 20


def test_freed_temporaries_do_not_add_up_and_held_ones_do():
    x = torch.empty(MB // 4, device="meta")  # 1 MiB of float32

    def chain(v):
        for _ in range(10):
            v = v * 2  # each result frees the one before
        return v

    held = []

    def keep(v):
        for _ in range(10):
            held.append(v * 2)

    assert trace_cost(chain, x).peak_bytes == 2 * MB
    assert trace_cost(keep, x).peak_bytes == 10 * MB
    assert trace_cost(lambda v: v.view(2, -1).add_(1), x).peak_bytes == 0  # views and in-place results add nothing


def test_convolution_flops_and_fused_attention_memory():
    conv = torch.nn.Conv3d(4, 8, 3, padding=1, device="meta")
    x = torch.empty(1, 4, 16, 16, 16, device="meta")
    cost = trace_cost(conv, x)
    assert cost.flops == 2 * 16 ** 3 * 8 * 4 * 27  # one multiply-add per weight and output voxel
    assert cost.peak_bytes >= 8 * 16 ** 3 * 4
    q = torch.empty(1, 2, 4096, 32, device="meta")
    attention = trace_cost(F.scaled_dot_product_attention, q, q, q)
    assert attention.flops == 4 * 2 * 4096 * 4096 * 32
    assert attention.peak_bytes == q.numel() * 4  # no 4096 x 4096 matrix, as a fused kernel holds none
    assert parameter_bytes(conv) == (8 * 4 * 27 + 8) * 4


def test_the_trace_of_real_tensors_matches_the_meta_trace():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.SiLU(),
                              torch.nn.Conv3d(4, 1, 3, padding=1))
    real = trace_cost(net, torch.randn(1, 1, 8, 8, 8))
    meta = trace_cost(net.to("meta"), torch.empty(1, 1, 8, 8, 8, device="meta"))
    assert real == meta and real.flops > 0

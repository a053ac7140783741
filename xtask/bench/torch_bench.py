"""Times PyTorch's quantized::linear and quantized::conv2d (engine fbgemm, one thread).

Usage: python torch_bench.py [--min-time SECONDS]
Prints one JSON object per line: {"name": ..., "ops": ..., "seconds": ..., "gops": ...}.
Shapes must agree with benches/kernels.rs (xtask/src/bench.rs checks that every one is here).
Conv inputs are given channels-last (FBGEMM's native layout, so no conversion is timed).
"""

import argparse
import json
import statistics
import time

import torch

torch.set_num_threads(1)
torch.backends.quantized.engine = "fbgemm"

LINEAR = [(1, 1024, 1024), (16, 1024, 1024), (128, 1024, 1024), (256, 4096, 4096)]


def timeit(fn, min_time):
    """Median seconds per call over batches of calls (the statistic qparity's criterion side uses)."""
    for _ in range(3):
        fn()
    # Calibrate the batch size to about a twentieth of the measuring time.
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt > min_time / 20:
            break
        n *= 2
    samples = []
    deadline = time.perf_counter() + min_time
    while time.perf_counter() < deadline or len(samples) < 5:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n)
    return statistics.median(samples)


def per_channel_weight(shape, gen):
    w = torch.randn(shape, generator=gen)
    scales = w.reshape(shape[0], -1).abs().amax(dim=1) / 127.0
    return torch.quantize_per_channel(w, scales, torch.zeros(shape[0], dtype=torch.long), 0, torch.qint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-time", type=float, default=2.0)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    out = []
    for m, k, n in LINEAR:
        x = torch.quantize_per_tensor(torch.rand(m, k, generator=gen) * 4 - 1, 4.0 / 255, 64, torch.quint8)
        w = per_channel_weight((n, k), gen)
        bias = torch.randn(n, generator=gen)
        packed = torch.ops.quantized.linear_prepack(w, bias)
        fn = lambda: torch.ops.quantized.linear(x, packed, 0.5, 100)
        s = timeit(fn, args.min_time)
        out.append({"name": f"linear_{m}x{k}x{n}", "ops": 2 * m * k * n, "seconds": s})

    def conv(name, c_in, c_out, groups, h, w):
        x = torch.quantize_per_tensor(torch.rand(1, c_in, h, w, generator=gen) * 4 - 1, 4.0 / 255, 64, torch.quint8)
        x = x.contiguous(memory_format=torch.channels_last)
        wq = per_channel_weight((c_out, c_in // groups, 3, 3), gen)
        bias = torch.randn(c_out, generator=gen)
        packed = torch.ops.quantized.conv2d_prepack(wq, bias, [1, 1], [1, 1], [1, 1], groups)
        fn = lambda: torch.ops.quantized.conv2d(x, packed, 0.5, 100)
        s = timeit(fn, args.min_time)
        ops = 2 * h * w * c_out * (c_in // groups) * 9
        out.append({"name": name, "ops": ops, "seconds": s})

    conv("conv2d_3x3_64x64_56x56", 64, 64, 1, 56, 56)
    conv("depthwise_3x3_128_56x56", 128, 128, 128, 56, 56)
    for r in out:
        r["gops"] = r["ops"] / r["seconds"] / 1e9
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()

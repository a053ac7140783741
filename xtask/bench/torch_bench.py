"""Times PyTorch's quantized::linear and quantized::conv2d (engine fbgemm, one thread).

Usage: python torch_bench.py [--min-time SECONDS] [--serve]

Without --serve, times every shape and prints one JSON object per line:
  {"name", "ops", "min_s", "median_s", "cpu_min_s", "gops"}   (gops from the fastest batch)
With --serve (used by `cargo xtask bench`), first prints {"probe": numerics} and then, for each
shape name read from stdin, one such line, so the shapes can alternate with qparity's.

The probe runs a linear layer whose int16 pair sums overflow and reports which accumulation
FBGEMM computed ("exact" or "pair-saturating"): FBGEMM_ENABLE_INSTRUCTIONS=AVX2 on a VNNI CPU
must give pair-saturating, the default exact (on an AVX2-only CPU both are pair-saturating).

Shapes and timing method must agree with benches/kernels.rs. Conv inputs are channels-last
(FBGEMM's native layout, so no conversion is timed).
"""

import argparse
import json
import statistics
import sys
import time
import warnings

import torch

warnings.filterwarnings("ignore", message=".*deprecated.*")
torch.set_num_threads(1)
torch.backends.quantized.engine = "fbgemm"

LINEAR = [(1, 1024, 1024), (16, 1024, 1024), (128, 1024, 1024), (256, 4096, 4096)]


def wait_s():
    """Seconds this thread has waited for a CPU while runnable (/proc/thread-self/schedstat field 2,
    as benches/kernels.rs)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) * 1e-9
    except (OSError, ValueError, IndexError):
        return None


def measure(fn, min_time):
    """(fastest wall, median wall, fastest on-CPU) seconds per call over batches of calls, on-CPU
    being wall time minus the time spent waiting for the CPU (benches/kernels.rs does the same)."""
    for _ in range(3):
        fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t0 > min_time / 20:
            break
        n *= 2
    samples, cpu = [], []
    deadline = time.perf_counter() + min_time
    while time.perf_counter() < deadline or len(samples) < 5:
        # Waits read inside the timed interval: a wait can only be counted if it happened
        # within it, so on-CPU time is never underestimated.
        t0 = time.perf_counter()
        w0 = wait_s()
        for _ in range(n):
            fn()
        w1 = wait_s()
        dt = time.perf_counter() - t0
        samples.append(dt / n)
        if w0 is not None and w1 is not None:
            cpu.append((dt - max(w1 - w0, 0.0)) / n)
    return min(samples), statistics.median(samples), (min(cpu) if cpu else None)


def per_channel_weight(shape, gen):
    w = torch.randn(shape, generator=gen)
    scales = w.reshape(shape[0], -1).abs().amax(dim=1) / 127.0
    return torch.quantize_per_channel(w, scales, torch.zeros(shape[0], dtype=torch.long), 0, torch.qint8)


def shapes():
    """name -> (ops, fn), built once."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for m, k, n in LINEAR:
        x = torch.quantize_per_tensor(torch.rand(m, k, generator=gen) * 4 - 1, 4.0 / 255, 64, torch.quint8)
        packed = torch.ops.quantized.linear_prepack(per_channel_weight((n, k), gen), torch.randn(n, generator=gen))
        out[f"linear_{m}x{k}x{n}"] = (
            2 * m * k * n,
            lambda x=x, packed=packed: torch.ops.quantized.linear(x, packed, 0.5, 100),
        )

    def conv(name, c_in, c_out, groups, h, w):
        x = torch.quantize_per_tensor(torch.rand(1, c_in, h, w, generator=gen) * 4 - 1, 4.0 / 255, 64, torch.quint8)
        x = x.contiguous(memory_format=torch.channels_last)
        wq = per_channel_weight((c_out, c_in // groups, 3, 3), gen)
        packed = torch.ops.quantized.conv2d_prepack(wq, torch.randn(c_out, generator=gen), [1, 1], [1, 1], [1, 1], groups)
        ops = 2 * h * w * c_out * (c_in // groups) * 9
        out[name] = (ops, lambda x=x, packed=packed: torch.ops.quantized.conv2d(x, packed, 0.5, 100))

    conv("conv2d_3x3_64x64_56x56", 64, 64, 1, 56, 56)
    conv("depthwise_3x3_128_56x56", 128, 128, 128, 56, 56)
    return out


def probe():
    """Which accumulation FBGEMM's linear computes in this process."""
    m, k, n = 4, 64, 8
    x = torch.quantize_per_tensor(torch.full((m, k), 255.0), 1.0, 0, torch.quint8)
    w = torch.quantize_per_tensor(torch.full((n, k), 127.0), 1.0, 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(w, None)
    # Every pair sums to 2·255·127 = 64 770, saturated to 32 767: exact Σ = 2 072 640 → 127,
    # pair-saturated Σ = 1 048 544 → 64 (output scale 2^14).
    y = torch.ops.quantized.linear(x, packed, 2.0**14, 0).int_repr()
    vals = set(y.flatten().tolist())
    if vals == {127}:
        return "exact"
    if vals == {64}:
        return "pair-saturating"
    return f"unexpected {sorted(vals)}"


def line(name, ops, t):
    best, median, cpu = t
    return json.dumps(
        {"name": name, "ops": ops, "min_s": best, "median_s": median, "cpu_min_s": cpu, "gops": ops / best / 1e9}
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--serve", action="store_true")
    args = ap.parse_args()
    table = shapes()
    if not args.serve:
        for name, (ops, fn) in table.items():
            print(line(name, ops, measure(fn, args.min_time)), flush=True)
        return
    print(json.dumps({"probe": probe(), "torch": torch.__version__}), flush=True)
    for req in sys.stdin:
        name = req.strip()
        if not name:
            continue
        if name not in table:
            print(json.dumps({"name": name, "error": "unknown shape"}), flush=True)
            continue
        ops, fn = table[name]
        print(line(name, ops, measure(fn, args.min_time)), flush=True)


if __name__ == "__main__":
    main()

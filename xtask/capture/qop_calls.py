# How each op on quantized tensors is called in PyTorch: `QOP_CALLS[op](inputs, params)` with the
# quantized input tensors and the case's `args.params`. Used by the capture (xtask/capture/qops.py)
# and embedded verbatim in `qparity repro` scripts, so both call PyTorch the same way.
import torch
import torch.nn.functional as F

QOP_CALLS = {
    "relu6": lambda xs, p: F.relu6(xs[0]),
    "hardtanh": lambda xs, p: F.hardtanh(xs[0], p["min_val"], p["max_val"]),
    "relu": lambda xs, p: F.relu(xs[0]),
    "add": lambda xs, p: torch.ops.quantized.add(xs[0], xs[1], p["scale"], p["zero_point"]),
    "add_relu": lambda xs, p: torch.ops.quantized.add_relu(xs[0], xs[1], p["scale"], p["zero_point"]),
    "mul": lambda xs, p: torch.ops.quantized.mul(xs[0], xs[1], p["scale"], p["zero_point"]),
    "mul_relu": lambda xs, p: torch.ops.quantized.mul_relu(xs[0], xs[1], p["scale"], p["zero_point"]),
    "cat": lambda xs, p: torch.ops.quantized.cat(xs, p["dim"], p["scale"], p["zero_point"]),
    "cat_relu": lambda xs, p: torch.ops.quantized.cat_relu(xs, p["dim"], p["scale"], p["zero_point"]),
    "hardswish": lambda xs, p: torch.ops.quantized.hardswish(xs[0], p["scale"], p["zero_point"]),
    "hardsigmoid": lambda xs, p: F.hardsigmoid(xs[0]),
    "leaky_relu": lambda xs, p: torch.ops.quantized.leaky_relu(
        xs[0], p["negative_slope"], False, p["scale"], p["zero_point"]),
    "sigmoid": lambda xs, p: torch.sigmoid(xs[0]),
    "tanh": lambda xs, p: torch.tanh(xs[0]),
    "elu": lambda xs, p: torch.ops.quantized.elu(xs[0], p["output_scale"], p["output_zero_point"], p["alpha"],
                                                 p["scale"], p["input_scale"]),
    "max_pool2d": lambda xs, p: F.max_pool2d(xs[0], p["kernel_size"], p["stride"], p["padding"],
                                             p["dilation"], ceil_mode=p["ceil_mode"]),
    "avg_pool2d": lambda xs, p: F.avg_pool2d(xs[0], p["kernel_size"], p["stride"], p["padding"],
                                             ceil_mode=p["ceil_mode"],
                                             count_include_pad=p["count_include_pad"],
                                             divisor_override=p["divisor_override"]),
    "adaptive_avg_pool2d": lambda xs, p: F.adaptive_avg_pool2d(xs[0], p["output_size"]),
    "mean": lambda xs, p: xs[0].mean(p["dim"], keepdim=p["keepdim"]),
    "batch_norm2d": lambda xs, p: (torch.ops.quantized.batch_norm2d_relu if p["relu"]
                                   else torch.ops.quantized.batch_norm2d)(
        xs[0], *(torch.tensor(p[k], dtype=torch.float32)
                 for k in ("weight", "bias", "running_mean", "running_var")),
        p["eps"], p["scale"], p["zero_point"]),
    "flatten": lambda xs, p: torch.flatten(xs[0], p["start_dim"], p["end_dim"]),
    "add_scalar": lambda xs, p: torch.ops.quantized.add(xs[0], float(p["other"])),
    "add_scalar_relu": lambda xs, p: torch.ops.quantized.add_relu(xs[0], float(p["other"])),
    "mul_scalar": lambda xs, p: torch.ops.quantized.mul(xs[0], float(p["other"])),
    "mul_scalar_relu": lambda xs, p: torch.ops.quantized.mul_relu(xs[0], float(p["other"])),
}


def channels_last(x):
    """A quantized tensor in channels-last memory format with channels-last strides, also when it
    is contiguous both ways (N×C×1×1, C = 1), where `.contiguous(memory_format=...)` would keep
    its NCHW strides."""
    y = torch._empty_affine_quantized(tuple(x.shape), scale=x.q_scale(), zero_point=x.q_zero_point(),
                                      dtype=x.dtype, memory_format=torch.channels_last)
    y.copy_(x)
    return y


def qop_input(rec, make_tensor):
    """A case's quantized input record as a torch tensor in its memory format."""
    x = torch._make_per_tensor_quantized_tensor(make_tensor(rec["int_repr"]), rec["scale"], rec["zero_point"])
    if rec.get("memory_format") == "channels_last":
        x = channels_last(x)
    return x

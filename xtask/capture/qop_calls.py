# How each op on quantized tensors is called in PyTorch: `QOP_CALLS[op](inputs, params)` with the
# quantized input tensors and the case's `args.params`. Used by the capture (xtask/capture/qops.py)
# and embedded verbatim in `qparity repro` scripts, so both call PyTorch the same way.
import torch
import torch.nn.functional as F

QOP_CALLS = {
    "relu6": lambda xs, p: F.relu6(xs[0]),
    "hardtanh": lambda xs, p: F.hardtanh(xs[0], p["min_val"], p["max_val"]),
    "relu": lambda xs, p: F.relu(xs[0]),
    "sigmoid": lambda xs, p: torch.sigmoid(xs[0]),
    "tanh": lambda xs, p: torch.tanh(xs[0]),
    "elu": lambda xs, p: torch.ops.quantized.elu(xs[0], p["output_scale"], p["output_zero_point"], p["alpha"],
                                                 p["scale"], p["input_scale"]),
}


def qop_input(rec, make_tensor):
    """A case's quantized input record as a torch tensor in its memory format."""
    x = torch._make_per_tensor_quantized_tensor(make_tensor(rec["int_repr"]), rec["scale"], rec["zero_point"])
    if rec.get("memory_format") == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x

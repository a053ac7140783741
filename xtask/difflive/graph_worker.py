"""Long-running PyTorch worker for `cargo xtask diff-live --graphs`.

Protocol: JSON lines. First line out is a hello {"torch": version, "isa": "default" | "avx2"}
(avx2: started with FBGEMM_ENABLE_INSTRUCTIONS=AVX2). Each request is a graph spec
(xtask/capture/livegraph.py, xtask/src/livegraph.rs); each reply, in order, is
  {"id", "case": <graph case, golden/README.md kind `graph`>, "timings": {stage: seconds}}
or {"id", "rejected": message} where PyTorch refused the graph or its qconfig (prepare, convert
or a run raised), or {"id", "error": message} for a malformed spec.
"""
import json
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "capture"))

import torch  # noqa: E402
from torch.ao.quantization import HistogramObserver  # noqa: E402

from graphs import FORMAT2, graph_case  # noqa: E402
from livegraph import SpecError, build_model, data, qconfig_mapping  # noqa: E402

torch.set_num_threads(1)

# The three flows convert deep copies of one calibrated model, so every HistogramObserver's
# `calculate_qparams()` (a pure function of its histogram, min / max and settings, whose parameter
# search is most of a convert's time) gets the same state three times: computed once per graph.
_histogram_qparams = HistogramObserver.calculate_qparams
_memo = {}


def _memo_qparams(self):
    key = (self.histogram.detach().numpy().tobytes(), self.min_val.detach().numpy().tobytes(),
           self.max_val.detach().numpy().tobytes(), self.bins, self.upsample_rate, self.dtype, self.qscheme,
           self.quant_min, self.quant_max, self.reduce_range, self.has_customized_qrange,
           self.eps.detach().numpy().tobytes())
    hit = _memo.get(key)
    if hit is None:
        hit = _memo[key] = _histogram_qparams(self)
    return tuple(t.clone() for t in hit)


# QPARITY_NO_HISTOGRAM_MEMO=1 measures the run without it.
if os.environ.get("QPARITY_NO_HISTOGRAM_MEMO") != "1":
    HistogramObserver.calculate_qparams = _memo_qparams
ISA = "avx2" if os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS") == "AVX2" else "default"
VERSION = torch.__version__.split("+")[0]


def run(spec):
    _memo.clear()
    timings = {}
    t0 = time.perf_counter()
    try:
        model = build_model(spec)
        calib, tests = data(spec)
        mapping = qconfig_mapping(spec)
    except (SpecError, KeyError, TypeError) as e:
        return {"id": spec.get("id"), "error": "%s: %s" % (type(e).__name__, e)}
    timings["build"] = time.perf_counter() - t0
    if spec["mode"] == "qat":
        # Training-mode forwards: seeded, so that a repro sees the same fake-quant steps.
        torch.manual_seed(int(spec["seed"]) & 0x7FFFFFFF)
    try:
        body = graph_case(model, spec["engine"], spec["mode"], calib, tests, mapping=mapping, timings=timings)
    except (RuntimeError, ValueError, AssertionError, NotImplementedError, TypeError, IndexError) as e:
        msg = str(e).strip().splitlines()
        return {"id": spec["id"], "rejected": "%s: %s" % (type(e).__name__, msg[0][:300] if msg else "")}
    case = {"format": FORMAT2, "id": spec["id"], "kind": "graph", "seed": int(spec["seed"]),
            "torch_version": VERSION, "isa": ISA, "tags": ["diff-live"], "op": "livegraph", "spec": spec}
    case.update(body)
    return {"id": spec["id"], "case": case, "timings": timings}


WARM_UP = {"id": "warm-up", "seed": 1, "engine": "fbgemm", "mode": "ptq", "input": [1, 2, 4, 4],
           "nodes": [{"op": "conv2d", "in": [0], "in_channels": 2, "out_channels": 2, "kernel": [1, 1],
                      "stride": [1, 1], "padding": [0, 0], "groups": 1, "bias": True, "wscale": 1.0},
                     {"op": "add_relu", "in": [1, 0]}],
           "qconfig": {"activation": {"observer": "MinMaxObserver", "dtype": "quint8",
                                      "qscheme": "per_tensor_affine", "reduce_range": False},
                       "weight": {"observer": "MinMaxObserver", "dtype": "qint8",
                                  "qscheme": "per_tensor_symmetric", "reduce_range": False}},
           "calib": {"batches": 1, "std": 1.0, "mean": 0.0}, "tests": [1.0]}


def main():
    out = sys.stdout
    # FX's first prepare takes seconds (imports, pattern tables): done before the hello, so that
    # a run's rate counts graphs only.
    warm = run(WARM_UP)
    if "case" not in warm:
        raise SystemExit("graph_worker: the warm-up graph failed: %s" % warm)
    out.write(json.dumps({"torch": VERSION, "isa": ISA}) + "\n")
    out.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            spec = json.loads(line)
        except ValueError as e:
            reply = {"id": None, "error": "bad request: %s" % e}
        else:
            reply = run(spec)
        out.write(json.dumps(reply, separators=(",", ":")) + "\n")
        out.flush()


if __name__ == "__main__":
    main()

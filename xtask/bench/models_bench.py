"""PyTorch's side of `cargo xtask bench --models`: torchvision's quantizable models through
convert_fx (PTQ, fbgemm and x86 engines), one thread, served over stdin/stdout (JSON lines).

Commands (one JSON object per line on stdin, one reply per line on stdout):
  {"cmd": "load", "model": M, "size": S, "out": DIR}
      Builds M with the graph capture's generated parameters (xtask/capture/graphs.py,
      build_model), calibrates on two generated S×S inputs, converts with convert_fx under fbgemm
      and under x86, and writes the fbgemm model's convert_fx flow on a third input as a graph
      case (golden/README.md, kind "graph", only the convert_fx flow) to DIR/cases/<id>.json.
      Replies {"case": path, "output_sha256": {engine: SHA-256 of the f32 output bytes}}.
  {"cmd": "time", "engine": E, "min_time": T}
      Times the loaded model of engine E on the test input: {"min_s", "median_s", "cpu_min_s"}.
  {"cmd": "profile", "engine": E, "runs": N}
      Per-op self CPU time (torch.profiler) averaged over N runs: {"ops": {name: seconds}}.
"""

import copy
import hashlib
import json
import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "capture"))

warnings.filterwarnings("ignore")
import torch  # noqa: E402
from torch.ao.quantization import get_default_qconfig_mapping  # noqa: E402
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # noqa: E402

import graphs  # noqa: E402
from golden import dump  # noqa: E402
from torch_bench import measure  # noqa: E402

torch.set_num_threads(1)
SEED = 0
ENGINES = ("fbgemm", "x86")


def case_id(model, size):
    return f"bench-{model}-fbgemm-ptq-{size}"


def converted(name, engine, size, cid):
    """The convert_fx model of `name` for `engine`, calibrated as the capture does, and the test
    input (1.5x wider than calibration, as graphs.model_graph_case)."""
    kw, _ = graphs.MODELS[name]
    graphs.MODELS[name] = (kw, size)
    model, _, hw = graphs.build_model(name, SEED, cid)
    calib = [graphs._inputs(SEED, cid, hw, i) for i in range(2)]
    torch.backends.quantized.engine = engine
    prepared = prepare_fx(model.eval(), get_default_qconfig_mapping(engine), (calib[0],))
    with torch.no_grad():
        for x in calib:
            prepared(x)
    gm = convert_fx(copy.deepcopy(prepared))
    gm.eval()
    return gm, graphs._inputs(SEED, cid, hw, 9, mult=1.5)


def capture(name, size, out):
    """The fbgemm model's convert_fx flow as a graph case (graphs.model_graph_case with only the
    convert_fx flow)."""
    cid = case_id(name, size)
    kw, _ = graphs.MODELS[name]
    graphs.MODELS[name] = (kw, size)
    flows, delta = graphs.FLOWS, graphs._delta_from
    graphs.FLOWS = [f for f in flows if f[0] == "convert_fx"]
    graphs._delta_from = lambda *_: None
    try:
        torch.backends.quantized.engine = "fbgemm"
        body = graphs.model_graph_case(name, "fbgemm", "ptq", SEED, cid)
    finally:
        graphs.FLOWS, graphs._delta_from = flows, delta
    case = {"format": graphs.FORMAT2, "id": cid, "kind": "graph", "seed": SEED,
            "torch_version": torch.__version__.split("+")[0], "isa": "default", "tags": ["bench"],
            "op": name}
    case.update(body)
    os.makedirs(os.path.join(out, "cases"), exist_ok=True)
    path = os.path.join(out, "cases", cid + ".json")
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write(dump(case))
    return path


def main():
    models = {}
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "load":
            name, size = req["model"], int(req["size"])
            path = capture(name, size, req["out"])
            models.clear()
            shas = {}
            for e in ENGINES:
                gm, x = converted(name, e, size, case_id(name, size))
                torch.backends.quantized.engine = e
                with torch.no_grad():
                    y = gm(x)
                shas[e] = hashlib.sha256(y.detach().contiguous().numpy().astype("<f4").tobytes()).hexdigest()
                models[e] = (gm, x)
            reply = {"case": path, "output_sha256": shas}
        elif cmd == "time":
            gm, x = models[req["engine"]]
            torch.backends.quantized.engine = req["engine"]

            def call():
                with torch.no_grad():
                    gm(x)

            mn, med, cpu = measure(call, float(req["min_time"]))
            reply = {"min_s": mn, "median_s": med, "cpu_min_s": cpu}
        elif cmd == "profile":
            gm, x = models[req["engine"]]
            torch.backends.quantized.engine = req["engine"]
            runs = int(req.get("runs", 5))
            with torch.no_grad():
                gm(x)
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    for _ in range(runs):
                        gm(x)
            ops = {}
            for ev in prof.key_averages():
                if ev.self_cpu_time_total > 0:
                    ops[ev.key] = ev.self_cpu_time_total * 1e-6 / runs
            reply = {"ops": ops}
        else:
            reply = {"error": f"unknown command {cmd!r}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()

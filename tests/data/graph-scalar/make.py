"""Makes the graph cases of tests/graph_scalar.rs: a conv, x + 3.0, x * 0.5, relu(x + -1.25), x * -2.0,
a conv, through the capture's graph_case (xtask/capture/graphs.py) under fbgemm and qnnpack PTQ, with
the scalar adds / muls mapped to add_scalar, mul_scalar, add_scalar_relu (graphs.py does not map
them yet). Run: QPARITY_VENV=/work/venv; $QPARITY_VENV/bin/python tests/data/graph-scalar/make.py
(writes into the current directory)."""
import json, os, sys
import torch
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "xtask", "capture"))
torch.set_num_threads(1)
import graphs

orig_function_op, orig_chain_op = graphs._function_op, graphs._chain_op

def _scalar_arg(n):
    if len(n.args) == 2 and isinstance(n.args[1], (int, float)) and not isinstance(n.args[1], bool):
        return float(n.args[1])
    return None

def function_op(n):
    name = graphs._target_name(n)
    c = _scalar_arg(n)
    if name in ("add", "add_relu", "mul", "mul_relu") and c is not None:
        base, relu = name.split("_")[0], name.endswith("_relu")
        return base + "_scalar" + ("_relu" if relu else ""), {"other": c}
    return orig_function_op(n)

def chain_op(gm, chain, values):
    ops = [graphs._target_name(n) for n in chain if n.op == "call_function"]
    if len(chain) == 2 and ops and ops[0] in ("add", "mul") and _scalar_arg(chain[0]) is not None and graphs._target_name(chain[1]) in ("relu", "relu_"):
        return ops[0] + "_scalar_relu", {"other": _scalar_arg(chain[0])}, None
    return orig_chain_op(gm, chain, values)

graphs._function_op, graphs._chain_op = function_op, chain_op

class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 4, 1)
    def forward(self, x):
        y = self.c1(x)
        y = y + 3.0
        y = y * 0.5
        y = torch.relu(y + (-1.25))
        return self.c2(y * -2.0)

torch.manual_seed(0)
out = {}
for engine in ["fbgemm", "qnnpack"]:
    m = M()
    calib = [torch.randn(1, 3, 8, 8) for _ in range(2)]
    tests = [torch.randn(1, 3, 8, 8) * 1.5]
    body = graphs.graph_case(m, engine, "ptq", calib, tests)
    cid = f"graph-scalardemo-{engine}-ptq-default-0000"
    case = {"format": graphs.FORMAT2, "id": cid, "kind": "graph",
            "seed": 0, "torch_version": torch.__version__.split("+")[0], "isa": "default", "tags": [], "op": "scalardemo"}
    case.update(body)
    for f, fl in body["flows"].items():
        print(engine, f, [(n["name"], n["op"], n.get("attrs")) for n in fl["nodes"]])
    json.dump(case, open(cid + ".json", "w"))

//! `qparity repro`: a standalone Python script that rebuilds a golden case in PyTorch and prints
//! PyTorch's outputs beside the case's stored ones, so a finding can be reported upstream.
//!
//! The case JSON is embedded in the script verbatim (a JSON string literal is a valid Python
//! string literal), and the script decodes tensors from the golden format itself (hex IEEE-754
//! bits for floats, integer lists otherwise), so it needs nothing but `torch`.

use crate::golden::{load_case, Body, CaptureIsa, Case, PrimOp};
use crate::{Error, Result};
use std::path::Path;

/// Primitive ops the script knows how to call (every registered op but the stateful ones).
pub fn supports(op: PrimOp) -> bool {
    !matches!(op, PrimOp::Observer | PrimOp::FusedMovingAvgObsFakeQuant)
}

const PRELUDE: &str = r#"import base64, json, os, struct, sys, zlib
"#;

/// How ops on quantized tensors are called: the capture's own table (one source for both).
const QOP_CALLS: &str = include_str!("../xtask/capture/qop_calls.py");

const COMMON: &str = r#"import torch
import torch.ao.quantization.fx._decomposed  # registers quantized_decomposed ops
torch.set_num_threads(1)

_INT = {"u8": torch.uint8, "i8": torch.int8, "i32": torch.int32, "i64": torch.int64, "bool": torch.bool}


def T(t):
    """Decodes a golden tensor: hex IEEE-754 bits, an integer list, or "z" (zlib of LE bytes)."""
    shape = t["shape"]
    code = {"f32": "f", "f64": "d", "u8": "B", "i8": "b", "i32": "i", "i64": "q", "bool": "B"}[t["dtype"]]
    if "z" in t:
        raw = zlib.decompress(base64.b64decode(t["z"]))
        vals = struct.unpack("<%d%s" % (len(raw) // struct.calcsize(code), code), raw)
    elif t["dtype"] in ("f32", "f64"):
        h = t["hex"]
        vals = struct.unpack(">%d%s" % (len(h) // (2 * struct.calcsize(code)), code), bytes.fromhex(h))
    else:
        vals = t["data"]
    dt = {"f32": torch.float32, "f64": torch.float64}.get(t["dtype"]) or _INT[t["dtype"]]
    return torch.tensor(vals, dtype=dt).reshape(shape)


def bits(x):
    """Comparable values: float bit patterns (NaN/-0.0 exact), integers as int64."""
    x = x.detach().contiguous()
    if x.dtype == torch.float32:
        return x.view(torch.int32).reshape(-1).tolist()
    if x.dtype == torch.float64:
        return x.view(torch.int64).reshape(-1).tolist()
    return x.to(torch.int64).reshape(-1).tolist()


def compare(label, got, want):
    g, w = bits(got), bits(want)
    gv, wv = got.reshape(-1).tolist(), want.reshape(-1).tolist()
    if len(g) != len(w):
        print("%s: shape differs: pytorch %s, case %s" % (label, list(got.shape), list(want.shape)))
        return max(len(g), len(w))
    bad = [i for i in range(len(g)) if g[i] != w[i]]
    print("%s: %d/%d elements differ" % (label, len(bad), len(g)))
    print("    %-8s %-24s %-24s" % ("index", "pytorch", "case"))
    for i in (bad[:20] if bad else range(min(8, len(g)))):
        print("    %-8d %-24r %-24r%s" % (i, gv[i], wv[i], "  <-- differs" if g[i] != w[i] else ""))
    return len(bad)


_QD = {"quint8": torch.quint8, "qint8": torch.qint8, "qint32": torch.qint32,
       "uint8": torch.uint8, "int8": torch.int8, "int32": torch.int32}


def run_primitive(case):
    a, e, op = case["args"], case["expected"], case["op"]
    dec = torch.ops.quantized_decomposed
    if op == "quantize_per_tensor":
        got = torch.quantize_per_tensor(T(a["input"]), a["scale"], a["zero_point"], _QD[a["dtype"]]).int_repr()
        return compare(op, got, T(e["int_repr"]))
    if op == "quantize_per_channel":
        got = torch.quantize_per_channel(T(a["input"]), T(a["scales"]), T(a["zero_points"]), a["axis"], _QD[a["dtype"]]).int_repr()
        return compare(op, got, T(e["int_repr"]))
    if op == "dequantize_per_tensor":
        r = T(a["int_repr"])
        q = torch._make_per_tensor_quantized_tensor(r, a["scale"], a["zero_point"])
        return compare(op, q.dequantize(), T(e["output"]))
    if op == "dequantize_per_channel":
        r = T(a["int_repr"])
        q = torch._make_per_channel_quantized_tensor(r, T(a["scales"]), T(a["zero_points"]), a["axis"])
        return compare(op, q.dequantize(), T(e["output"]))
    if op == "decomposed_quantize_per_tensor":
        got = dec.quantize_per_tensor(T(a["input"]), a["scale"], a["zero_point"], a["quant_min"], a["quant_max"], _QD[a["dtype"]])
        return compare(op, got, T(e["output"]))
    if op == "decomposed_dequantize_per_tensor":
        got = dec.dequantize_per_tensor(T(a["input"]), a["scale"], a["zero_point"], a["quant_min"], a["quant_max"], _QD[a["dtype"]])
        return compare(op, got, T(e["output"]))
    if op == "decomposed_quantize_per_channel":
        got = dec.quantize_per_channel(T(a["input"]), T(a["scales"]), T(a["zero_points"]), a["axis"], a["quant_min"], a["quant_max"], _QD[a["dtype"]])
        return compare(op, got, T(e["output"]))
    if op == "decomposed_dequantize_per_channel":
        got = dec.dequantize_per_channel(T(a["input"]), T(a["scales"]), T(a["zero_points"]), a["axis"], a["quant_min"], a["quant_max"], _QD[a["dtype"]])
        return compare(op, got, T(e["output"]))
    if op == "fake_quantize_per_tensor_affine":
        got = torch.fake_quantize_per_tensor_affine(T(a["input"]), a["scale"], a["zero_point"], a["quant_min"], a["quant_max"])
        return compare(op, got, T(e["output"]))
    if op == "fake_quantize_per_channel_affine":
        got = torch.fake_quantize_per_channel_affine(T(a["input"]), T(a["scales"]), T(a["zero_points"]), a["axis"], a["quant_min"], a["quant_max"])
        return compare(op, got, T(e["output"]))
    if op == "quantized_linear":
        torch.backends.quantized.engine = a["engine"]
        x = torch.quantize_per_tensor(T(a["input"]), a["input_scale"], a["input_zero_point"], torch.quint8)
        if isinstance(a["weight_scale"], list):
            w = torch._make_per_channel_quantized_tensor(T(a["weight_int_repr"]), torch.tensor(a["weight_scale"], dtype=torch.float64), torch.tensor(a["weight_zero_point"]), 0)
        else:
            w = torch._make_per_tensor_quantized_tensor(T(a["weight_int_repr"]), a["weight_scale"], a["weight_zero_point"])
        b = T(a["bias"]) if a.get("bias") is not None else None
        packed = torch.ops.quantized.linear_prepack(w, b)
        linear = torch.ops.quantized.linear_relu if a.get("relu") else torch.ops.quantized.linear
        y = linear(x, packed, a["output_scale"], a["output_zero_point"])
        n = compare("quantize_per_tensor(input)", x.int_repr(), T(e["input_int_repr"]))
        return n + compare(op + " (" + a["engine"] + ")", y.int_repr(), T(e["int_repr"]))
    if op in QOP_CALLS:
        torch.backends.quantized.engine = a["engine"]
        xs = [qop_input(r, T) for r in a["inputs"]]
        y = QOP_CALLS[op](xs, a.get("params"))
        n = compare("%s (%s) output qparams" % (op, a["engine"]),
                    torch.tensor([y.q_scale(), float(y.q_zero_point())], dtype=torch.float64),
                    torch.tensor([a["output_scale"], float(a["output_zero_point"])], dtype=torch.float64))
        return n + compare("%s (%s)" % (op, a["engine"]), y.int_repr().contiguous(), T(e["int_repr"]))
    raise SystemExit("op %r is not supported by this script" % op)


def build_model(case):
    mods = []
    for L in case["layers"]:
        if L["op"] == "conv2d":
            m = torch.nn.Conv2d(L["in_channels"], L["out_channels"], tuple(L["kernel_size"]), stride=tuple(L["stride"]),
                                padding=tuple(L["padding"]), dilation=tuple(L["dilation"]), groups=L["groups"],
                                bias=L["bias"] is not None)
        elif L["op"] == "linear":
            m = torch.nn.Linear(L["in_features"], L["out_features"], bias=L["bias"] is not None)
        elif L["op"] == "relu":
            mods.append(torch.nn.ReLU())
            continue
        elif L["op"] == "flatten":
            mods.append(torch.nn.Flatten())
            continue
        else:
            raise SystemExit("unknown layer %r" % L["op"])
        with torch.no_grad():
            m.weight.copy_(T(L["weight"]))
            if L["bias"] is not None:
                m.bias.copy_(T(L["bias"]))
        mods.append(m)
    return torch.nn.Sequential(*mods)


def run_model(case):
    import copy
    from torch.ao.quantization import get_default_qconfig_mapping, get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import (prepare_fx, prepare_qat_fx, convert_fx,
                                                   convert_to_reference_fx, _convert_to_reference_decomposed_fx)
    engine, qat = case["engine"], case["mode"] == "qat"
    torch.backends.quantized.engine = engine
    model = build_model(case)
    example = (T(case["calibration"][0]),)
    if qat:
        model.train()
        prepared = prepare_qat_fx(model, get_default_qat_qconfig_mapping(engine), example)
    else:
        model.eval()
        prepared = prepare_fx(model, get_default_qconfig_mapping(engine), example)
    with torch.no_grad():
        for b in case["calibration"]:
            prepared(T(b))
    prepared.eval()
    convert = {"convert_fx": convert_fx, "convert_to_reference_fx": convert_to_reference_fx,
               "_convert_to_reference_decomposed_fx": _convert_to_reference_decomposed_fx}
    total = 0
    for name, rec in sorted(case["flows"].items()):
        if name not in convert:
            print("%s: unknown flow, skipped" % name)
            continue
        gm = convert[name](copy.deepcopy(prepared))
        for i, (x, run) in enumerate(zip(case["inputs"], rec["runs"])):
            with torch.no_grad():
                y = gm(T(x))
            total += compare("%s input %d" % (name, i), y, T(run["output"]))
    return total


def _capture_module(name):
    """One of the capture's modules (xtask/capture/NAME.py), from the source embedded below."""
    import types
    m = types.ModuleType(name)
    m.__file__ = "xtask/capture/%s.py" % name
    sys.modules[name] = m
    exec(compile(CAPTURE_SOURCES[name], m.__file__, "exec"), m.__dict__)
    return m


def run_graph(g):
    """Rebuilds the graph case's model as the capture did (xtask/capture/graphs.py:
    model_graph_case, build_model, _inputs, graph_case): generated weights, biases and BatchNorm
    parameters, the same calibration (PTQ) or seeded training-mode forwards (QAT), then converts
    with the case's flow, runs the case's test input and compares the named node with the case
    and with qparity."""
    import copy
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx
    for name in ("rng", "common", "graphs", "livegraph"):
        _capture_module(name)
    graphs = sys.modules["graphs"]
    engine, qat = g["engine"], g["mode"] == "qat"
    torch.backends.quantized.engine = engine
    if g.get("spec"):
        # A diff-live graph (xtask/capture/livegraph.py): model, qconfig mapping and data from its
        # spec; QAT's training-mode forwards seeded as xtask/difflive/graph_worker.py seeds them.
        live = sys.modules["livegraph"]
        spec = g["spec"]
        model = live.build_model(spec)
        calib, _ = live.data(spec)
        mapping = live.qconfig_mapping(spec)
        if qat:
            torch.manual_seed(int(spec["seed"]) & 0x7FFFFFFF)
            prepared = prepare_qat_fx(model.train(), mapping, (calib[0],))
        else:
            prepared = prepare_fx(model.eval(), mapping, (calib[0],))
    else:
        model, _, hw = graphs.build_model(g["model"], g["seed"], g["id"])
        calib = [graphs._inputs(g["seed"], g["id"], hw, i) for i in range(2)]
        if qat:
            calib = [torch.cat(calib)]
            # Dropout is active in QAT's training-mode forwards: torch's generator seeded as the
            # capture seeds it (graphs.model_graph_case).
            torch.manual_seed(graphs._stream(g["id"], "torch", "manual_seed") >> 1)
            prepared = prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping(engine), (calib[0],))
        else:
            prepared = prepare_fx(model.eval(), get_default_qconfig_mapping(engine), (calib[0],))
    with torch.no_grad():
        for x in calib:
            prepared(x)
    gm = dict(graphs.FLOWS)[g["flow"]](copy.deepcopy(prepared))
    gm.eval()
    rec = graphs.record_flow(g["flow"], gm, [T(g["input"])], True)
    v = rec["runs"][0]["values"].get(g["node"])
    if v is None:
        raise SystemExit("the rebuilt %s graph has no node %r" % (g["flow"], g["node"]))
    label = "%s %s node %s (%s)" % (g["model"], g["flow"], g["node"], engine)
    r = g["recorded"]
    n = compare(label + " qparams",
                torch.tensor([v["scale"], float(v["zero_point"]), float(v["quant_min"]), float(v["quant_max"])],
                             dtype=torch.float64),
                torch.tensor([r["scale"], float(r["zero_point"]), float(r["quant_min"]), float(r["quant_max"])],
                             dtype=torch.float64))
    got = torch.from_numpy(v["_codes"]).to(torch.int64)
    n += compare(label + ": pytorch now vs the case", got, T(r["int_repr"]))
    ours = g["qparity"]["int_repr"]
    flat = got.reshape(-1).tolist()
    decided = [i for i, q in enumerate(ours) if q is not None]
    bad = [i for i in decided if ours[i] != flat[i]]
    print("%s: qparity predicts %d of %d elements exactly (%d ambiguous), %d differ from pytorch"
          % (label, len(decided), len(ours), len(ours) - len(decided), len(bad)))
    print("    %-8s %-10s %-10s" % ("index", "pytorch", "qparity"))
    for i in (bad[:20] if bad else range(min(8, len(flat)))):
        print("    %-8d %-10d %-10s%s" % (i, flat[i], ours[i], "  <-- differs" if i in bad else ""))
    return n + len(bad)


if __name__ == "__main__":
    print("torch", torch.__version__, "engine case:", CASE.get("engine", "-"), "isa:", CASE.get("isa"))
    if CASE.get("torch_version") and CASE["torch_version"] != torch.__version__.split("+")[0]:
        print("note: case captured with torch", CASE["torch_version"])
    n = (run_primitive(CASE) if CASE["kind"] == "primitive" else
         run_graph(CASE) if CASE["kind"] == "graph" else run_model(CASE))
    print("\n%d mismatching elements in case %s" % (n, CASE["id"]))
    sys.exit(1 if n else 0)
"#;

/// Checks that a case can be reproduced by the generated script.
fn supported(case: &Case) -> Result<()> {
    if let Body::Primitive(p) = &case.body {
        if !supports(p.op) {
            let ok: Vec<&str> = PrimOp::ALL
                .iter()
                .filter(|o| supports(**o))
                .map(|o| o.name())
                .collect();
            return Err(Error::invalid(
                "repro",
                format!(
                    "{}: op {} has no repro script yet (supported: model cases and {})",
                    case.path.display(),
                    p.op.name(),
                    ok.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The capture modules a graph repro script runs (embedded verbatim, so the script rebuilds the
/// model exactly as the capture did).
const CAPTURE_SOURCES: [(&str, &str); 4] = [
    ("rng", include_str!("../xtask/capture/rng.py")),
    ("common", include_str!("../xtask/capture/common.py")),
    ("graphs", include_str!("../xtask/capture/graphs.py")),
    ("livegraph", include_str!("../xtask/capture/livegraph.py")),
];

/// The torchvision models the capture builds (the keys of `MODELS` in xtask/capture/graphs.py):
/// only their graph cases can be rebuilt by a script.
fn capture_models() -> Vec<&'static str> {
    let graphs = CAPTURE_SOURCES[2].1;
    let body = graphs
        .split_once("\nMODELS = {\n")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .map_or("", |(body, _)| body);
    body.lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.split_once('"'))
        .map(|(name, _)| name)
        .collect()
}

/// A Python string literal of `text` (a JSON string literal is one).
fn py_literal(text: &str) -> Result<String> {
    serde_json::to_string(text)
        .map_err(|e| Error::invalid("repro", format!("cannot encode a literal: {e}")))
}

/// What a graph case's script reproduces: one node of one flow on one test input, with PyTorch's
/// recorded value and qparity's prediction (from the check's own stage for that node).
fn graph_payload(
    case: &Case,
    v: &serde_json::Value,
    q: &crate::explain::ElementQuery,
) -> Result<serde_json::Value> {
    let Body::Graph(g) = &case.body else {
        return Err(Error::invalid("repro", "not a graph case"));
    };
    let models = capture_models();
    // diff-live graphs carry the spec their model is built from.
    let live = case.header.op == "livegraph" && g.spec.is_some();
    if !live && !models.contains(&case.header.op.as_str()) {
        return Err(Error::invalid(
            "repro",
            format!(
                "{}: model {} is not one the golden capture builds ({}), so no script can rebuild it",
                case.path.display(),
                case.header.op,
                models.join(", ")
            ),
        ));
    }
    let flow = q.flow.unwrap_or(crate::engine::flow::Flow::ConvertFx);
    let fr = g
        .flows
        .get(&flow)
        .ok_or_else(|| Error::invalid("repro", format!("the case has no {} flow", flow.name())))?;
    let node = q.node.clone().unwrap_or_else(|| fr.output.clone());
    let input = v["inputs"]
        .get(q.run)
        .cloned()
        .ok_or_else(|| Error::invalid("repro", format!("the case has no test input {}", q.run)))?;
    let sel = crate::explain::ElementQuery {
        node: Some(node.clone()),
        flow: Some(flow),
        ..q.clone()
    };
    let stages = case.stages(&crate::explain::case_cpu(&case.path)?)?;
    let chosen = crate::explain::select_stages(case, &stages, &sel)?;
    // The node's recorded codes and qparams (its convert_fx stage, or a reference flow's
    // quantize node), and qparity's codes from the op's own plan (the first stage).
    let rec = chosen
        .iter()
        .find_map(|s| {
            let e = s.expected.iter().find(|e| e.name == "int_repr")?;
            Some((s.out?, e.tensor.clone()))
        })
        .ok_or_else(|| Error::invalid("repro", format!("node {node} has no recorded codes")))?;
    let first = chosen[0];
    let metas: Vec<_> = first.inputs.iter().map(crate::ops::Value::meta).collect();
    let plan = first.op.plan(&first.ctx, &metas, first.out.as_ref())?;
    let outs = plan.predict(&first.inputs.iter().collect::<Vec<_>>())?;
    let ours: Vec<Option<i64>> = outs
        .iter()
        .find(|o| o.name == "int_repr")
        .and_then(|o| o.ints())
        .ok_or_else(|| Error::invalid("repro", format!("qparity predicts no codes for {node}")))?
        .iter()
        .map(|p| match p {
            crate::numerics::bound::Pred::Exact(x) => Some(*x),
            _ => None,
        })
        .collect();
    let (out, tensor) = rec;
    let codes = tensor
        .as_int()
        .ok_or_else(|| Error::invalid("repro", "recorded codes are not integers"))?;
    Ok(serde_json::json!({
        "format": case.header.format, "id": case.header.id, "kind": "graph",
        "model": case.header.op, "engine": g.engine.name(), "mode": g.mode.name(),
        "seed": case.header.seed, "torch_version": case.header.torch_version,
        "isa": v["isa"], "flow": flow.name(), "node": node, "run": q.run, "input": input,
        "spec": g.spec,
        "recorded": {"scale": out.scale, "zero_point": out.zero_point,
                     "quant_min": out.quant_min, "quant_max": out.quant_max,
                     "int_repr": {"dtype": "i64", "shape": tensor.shape, "data": codes}},
        "qparity": {"int_repr": ours},
    }))
}

/// Builds the script for a case given its JSON text (already validated as a case).
pub fn script_for(case: &Case, json_text: &str) -> Result<String> {
    script_for_node(case, json_text, &crate::explain::ElementQuery::default())
}

/// Builds the script for a case given its JSON text; for a graph case, for the node, flow and
/// test input of `q` (default: the convert_fx graph's output node, input 0).
pub fn script_for_node(
    case: &Case,
    json_text: &str,
    q: &crate::explain::ElementQuery,
) -> Result<String> {
    supported(case)?;
    // Re-serialize compactly so the literal is one line.
    let mut v: serde_json::Value = serde_json::from_str(json_text).map_err(|e| {
        Error::invalid(
            "repro",
            format!("{}: malformed JSON: {e}", case.path.display()),
        )
    })?;
    let graph = matches!(case.body, Body::Graph(_));
    if graph {
        v = graph_payload(case, &v, q)?;
    }
    let compact = serde_json::to_string(&v)
        .map_err(|e| Error::invalid("repro", format!("cannot encode case: {e}")))?;
    let literal = py_literal(&compact)?;
    let mut s = String::new();
    s.push_str("#!/usr/bin/env python3\n");
    s.push_str(&format!(
        "# Reproduces qparity case {} in PyTorch: prints PyTorch's outputs beside the stored ones.\n",
        case.header.id
    ));
    s.push_str(if graph {
        "# Generated by `qparity repro`. Needs torch, torchvision and numpy. Exit code 1 if anything differs.\n\
         # The model is calibrated again here: ATen's float kernels differ between CPU classes, so the\n\
         # observers (and every qparam after them) match the case only on a CPU of its capture class.\n"
    } else {
        "# Generated by `qparity repro`. Needs only torch. Exit code 1 if anything differs.\n"
    });
    s.push_str(PRELUDE);
    s.push_str(&format!("CASE = json.loads({literal})\n"));
    if case.header.isa == CaptureIsa::Avx2 {
        s.push_str(
            "# The case was captured with FBGEMM's AVX2 kernels (pairwise int16 saturation).\n\
             os.environ.setdefault(\"FBGEMM_ENABLE_INSTRUCTIONS\", \"AVX2\")\n",
        );
    }
    s.push_str(QOP_CALLS);
    s.push_str("CAPTURE_SOURCES = {}\n");
    if graph {
        for (name, src) in CAPTURE_SOURCES {
            s.push_str(&format!(
                "CAPTURE_SOURCES[{name:?}] = {}\n",
                py_literal(src)?
            ));
        }
    }
    s.push_str(COMMON);
    Ok(s)
}

/// Loads a case file and writes its script to `out` (refusing to overwrite without `force`).
pub fn write_repro(case_path: &Path, out: &Path, force: bool) -> Result<()> {
    write_repro_node(
        case_path,
        &crate::explain::ElementQuery::default(),
        out,
        force,
    )
}

/// [`write_repro`] for a graph case's node, flow and test input (`q`).
pub fn write_repro_node(
    case_path: &Path,
    q: &crate::explain::ElementQuery,
    out: &Path,
    force: bool,
) -> Result<()> {
    let script = repro_string_node(case_path, q)?;
    if out.exists() && !force {
        return Err(Error::invalid(
            "repro",
            format!(
                "{} already exists (pass --force to overwrite)",
                out.display()
            ),
        ));
    }
    std::fs::write(out, script).map_err(|error| Error::Io {
        path: out.to_path_buf(),
        error,
    })
}

/// The script for a case file, as a string.
pub fn repro_string(case_path: &Path) -> Result<String> {
    repro_string_node(case_path, &crate::explain::ElementQuery::default())
}

/// [`repro_string`] for a graph case's node, flow and test input (`q`).
pub fn repro_string_node(case_path: &Path, q: &crate::explain::ElementQuery) -> Result<String> {
    let case = load_case(case_path)?;
    let text = std::fs::read_to_string(case_path).map_err(|error| Error::Io {
        path: case_path.to_path_buf(),
        error,
    })?;
    script_for_node(&case, &text, q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::parse_case;

    fn case(op: &str, args: &str) -> (Case, String) {
        let text = format!(
            r#"{{"format":"qparity-golden/1","id":"it's \"quoted\"","kind":"primitive",
               "isa":"avx2","op":"{op}","args":{args},"expected":{{}}}}"#
        );
        (parse_case(Path::new("t.json"), &text).unwrap(), text)
    }

    const QARGS: &str = r#"{"scale":0.5,"zero_point":3}"#;

    #[test]
    fn script_embeds_case_and_isa_and_rejects_unknown_ops() {
        let (c, t) = case("quantize_per_tensor", QARGS);
        let s = script_for(&c, &t).unwrap();
        assert!(s.contains("CASE = json.loads(\"{"));
        assert!(s.contains("it's \\\\\\\"quoted\\\\\\\""));
        assert!(s.contains("FBGEMM_ENABLE_INSTRUCTIONS"));
        let (c, t) = case(
            "observer",
            r#"{"observer":{"class":"MinMaxObserver"},"batches":[]}"#,
        );
        assert!(script_for(&c, &t).is_err());
    }

    fn golden(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    /// The payload literal of a script (`CASE = json.loads(...)`), decoded.
    fn payload(script: &str) -> serde_json::Value {
        let line = script
            .lines()
            .find_map(|l| l.strip_prefix("CASE = json.loads("))
            .unwrap();
        let literal: String = serde_json::from_str(line.strip_suffix(')').unwrap()).unwrap();
        serde_json::from_str(&literal).unwrap()
    }

    #[test]
    fn graph_script_rebuilds_one_node_with_pytorchs_and_qparitys_codes() {
        use crate::engine::flow::Flow;
        use crate::explain::ElementQuery;
        let p =
            golden("golden/graphs-vnni-seed0/cases/graph-resnet18-fbgemm-ptq-default-0000.json");
        let q = ElementQuery {
            node: Some("layer1_0_conv1".into()),
            flow: Some(Flow::ConvertToReferenceDecomposedFx),
            ..Default::default()
        };
        let s = repro_string_node(&p, &q).unwrap();
        // The capture's own modules are embedded, so the model is rebuilt the way it was drawn.
        for name in ["rng", "common", "graphs"] {
            assert!(
                s.contains(&format!("CAPTURE_SOURCES[{name:?}] = \"")),
                "{name}"
            );
        }
        assert!(s.contains("Needs torch, torchvision and numpy"));
        // QAT forwards seed torch as the capture does (its Dropout draws).
        assert!(CAPTURE_SOURCES[2]
            .1
            .contains(r#"torch.manual_seed(_stream(case_id, "torch", "manual_seed") >> 1)"#));
        assert!(s.contains(
            r#"torch.manual_seed(graphs._stream(g["id"], "torch", "manual_seed") >> 1)"#
        ));
        let g = payload(&s);
        assert_eq!(g["kind"], "graph");
        assert_eq!(g["model"], "resnet18");
        assert_eq!(g["flow"], "_convert_to_reference_decomposed_fx");
        assert_eq!(g["node"], "layer1_0_conv1");
        assert_eq!(g["recorded"]["quant_max"], 127);
        let rec = g["recorded"]["int_repr"]["data"].as_array().unwrap();
        let ours = g["qparity"]["int_repr"].as_array().unwrap();
        assert_eq!(rec.len(), 64 * 8 * 8);
        assert_eq!(ours.len(), rec.len());
        // qparity's own float evaluation: decided codes equal PyTorch's recorded ones.
        let decided: Vec<_> = ours.iter().zip(rec).filter(|(o, _)| !o.is_null()).collect();
        assert!(decided.len() > rec.len() / 2);
        assert!(decided.iter().all(|(o, r)| o == r));
        // Default: convert_fx's output node; unknown nodes and inputs are errors.
        let g = payload(&repro_string(&p).unwrap());
        assert_eq!(
            (g["flow"].as_str(), g["node"].as_str()),
            (Some("convert_fx"), Some("fc"))
        );
        for bad in [
            ElementQuery {
                node: Some("nope".into()),
                ..Default::default()
            },
            ElementQuery {
                run: 5,
                ..Default::default()
            },
        ] {
            assert!(repro_string_node(&p, &bad).is_err());
        }
        // Only the capture's torchvision models can be rebuilt.
        assert_eq!(
            capture_models(),
            [
                "resnet18",
                "resnet50",
                "mobilenet_v2",
                "mobilenet_v3_large",
                "shufflenet_v2_x1_0",
                "googlenet",
                "inception_v3"
            ]
        );
        let demo = golden("tests/data/graph-scalar/graph-scalardemo-fbgemm-ptq-default-0000.json");
        let e = repro_string(&demo).unwrap_err().to_string();
        assert!(
            e.contains("model scalardemo is not one the golden capture builds"),
            "{e}"
        );
        // Ops cases embed the whole case and no capture module.
        let p = golden("golden/ops-vnni-seed0/cases/qop-add_scalar-x86-0013.json");
        let s = repro_string(&p).unwrap();
        assert!(!s.contains("CAPTURE_SOURCES[\"graphs\"]"));
        assert_eq!(payload(&s)["args"]["params"]["other"], 53.9375);
    }

    #[test]
    fn refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let (_, t) = case("quantize_per_tensor", QARGS);
        let cp = dir.path().join("c.json");
        std::fs::write(&cp, t).unwrap();
        let out = dir.path().join("r.py");
        write_repro(&cp, &out, false).unwrap();
        assert!(write_repro(&cp, &out, false).is_err());
        write_repro(&cp, &out, true).unwrap();
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        assert!(write_repro(&dir.path().join("bad.json"), &out, true).is_err());
    }
}

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
        w = torch._make_per_tensor_quantized_tensor(T(a["weight_int_repr"]), a["weight_scale"], a["weight_zero_point"])
        b = T(a["bias"]) if a.get("bias") is not None else None
        packed = torch.ops.quantized.linear_prepack(w, b)
        y = torch.ops.quantized.linear(x, packed, a["output_scale"], a["output_zero_point"])
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


if __name__ == "__main__":
    print("torch", torch.__version__, "engine case:", CASE.get("engine", "-"), "isa:", CASE.get("isa"))
    if CASE.get("torch_version") and CASE["torch_version"] != torch.__version__.split("+")[0]:
        print("note: case captured with torch", CASE["torch_version"])
    n = run_primitive(CASE) if CASE["kind"] == "primitive" else run_model(CASE)
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

/// Builds the script for a case given its JSON text (already validated as a case).
pub fn script_for(case: &Case, json_text: &str) -> Result<String> {
    supported(case)?;
    // Re-serialize compactly so the literal is one line.
    let v: serde_json::Value = serde_json::from_str(json_text).map_err(|e| {
        Error::invalid(
            "repro",
            format!("{}: malformed JSON: {e}", case.path.display()),
        )
    })?;
    let compact = serde_json::to_string(&v)
        .map_err(|e| Error::invalid("repro", format!("cannot encode case: {e}")))?;
    let literal = serde_json::to_string(&compact)
        .map_err(|e| Error::invalid("repro", format!("cannot encode case: {e}")))?;
    let mut s = String::new();
    s.push_str("#!/usr/bin/env python3\n");
    s.push_str(&format!(
        "# Reproduces qparity case {} in PyTorch: prints PyTorch's outputs beside the stored ones.\n",
        case.header.id
    ));
    s.push_str(
        "# Generated by `qparity repro`. Needs only torch. Exit code 1 if anything differs.\n",
    );
    s.push_str(PRELUDE);
    s.push_str(&format!("CASE = json.loads({literal})\n"));
    if case.header.isa == CaptureIsa::Avx2 {
        s.push_str(
            "# The case was captured with FBGEMM's AVX2 kernels (pairwise int16 saturation).\n\
             os.environ.setdefault(\"FBGEMM_ENABLE_INSTRUCTIONS\", \"AVX2\")\n",
        );
    }
    s.push_str(QOP_CALLS);
    s.push_str(COMMON);
    Ok(s)
}

/// Loads a case file and writes its script to `out` (refusing to overwrite without `force`).
pub fn write_repro(case_path: &Path, out: &Path, force: bool) -> Result<()> {
    let case = load_case(case_path)?;
    let text = std::fs::read_to_string(case_path).map_err(|error| Error::Io {
        path: case_path.to_path_buf(),
        error,
    })?;
    let script = script_for(&case, &text)?;
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
    let case = load_case(case_path)?;
    let text = std::fs::read_to_string(case_path).map_err(|error| Error::Io {
        path: case_path.to_path_buf(),
        error,
    })?;
    script_for(&case, &text)
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

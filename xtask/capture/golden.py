"""Golden capture for qparity (format `qparity-golden/1`, see golden/README.md).

Run by `cargo xtask golden`, once per ISA variant (FBGEMM reads FBGEMM_ENABLE_INSTRUCTIONS when
torch is imported, so each variant needs its own process), then once more to write the manifest:

    golden.py run --out DIR --seed S --cases N --isa default|avx2 [--suite core|ops|graphs|pins] [--registry OPS]
    golden.py manifest --out DIR --seed S [--suite core|ops|graphs|pins] [--emulator "qemu-x86_64 -cpu Haswell"]
    golden.py cpu          # the CPU as PyTorch's cpuinfo sees it (one JSON line)

`run` writes DIR/cases/<id>.json for the cases of the plan that belong to its ISA and prints one
line `CASE <plan index> <total> <id>` per case written (xtask turns these into a progress bar).
The plan (which case index is which op/engine/mode/ISA) depends only on N; the data drawn for a
case depends only on (seed, case index), and is the same on every CPU (rng.py). Under an emulator
(`qemu-x86_64 -cpu Haswell`) every step runs inside it, so the manifest records the CPU the
emulated process saw.
"""

import argparse
import hashlib
import json
import os
import sys

FORMAT = "qparity-golden/1"
ISAS = ("default", "avx2")


def _setup_env(isa):
    want = "AVX2" if isa == "avx2" else None
    have = os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS")
    if have != want:
        sys.exit(f"golden.py: --isa {isa} needs FBGEMM_ENABLE_INSTRUCTIONS={want or '<unset>'} in the "
                 f"environment at start-up (found {have!r}); run it through `cargo xtask golden`")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var) != "1":
            sys.exit(f"golden.py: {var}=1 must be set in the environment")


def build_plan(n_cases):
    """The first n_cases entries of the round-robin over the matrix (primitive slots and
    op x engine/ISA x mode model slots, interleaved), so any N covers as much as possible."""
    from prims import PRIM_SLOTS
    from models import ENGINE_ISAS, MODES, OPS

    model_slots = []
    n_models = len(OPS) * len(ENGINE_ISAS) * len(MODES)
    for j in range(n_models):
        a = j // len(OPS)
        op = OPS[j % len(OPS)]
        engine, isa = ENGINE_ISAS[(a + j) % len(ENGINE_ISAS)]
        mode = MODES[(a // len(ENGINE_ISAS) + j) % len(MODES)]
        model_slots.append(("model", op, engine, mode, isa))
    assert len(set(model_slots)) == n_models
    prim_slots = [("primitive", p) for p in PRIM_SLOTS]
    order = sorted([(i / len(prim_slots), 0, s) for i, s in enumerate(prim_slots)]
                   + [(j / len(model_slots), 1, s) for j, s in enumerate(model_slots)],
                   key=lambda t: (t[0], t[1]))
    round_slots = [s for _, _, s in order]
    plan = []
    seen = {}
    r = 0
    while len(plan) < n_cases:
        for s in round_slots:
            if len(plan) >= n_cases:
                break
            occ = seen.get(s, 0)
            seen[s] = occ + 1
            plan.append((len(plan), s, occ))
        r += 1
    return plan


def _case_id(index, slot):
    from prims import PRIMITIVES
    from qops import QOPS

    if slot[0] == "primitive":
        number = slot[2] if len(slot) > 2 else index  # specials: k within the op
        return f"prim-{PRIMITIVES[slot[1]][1]}-{number:04d}"
    if slot[0] == "qop":
        return f"qop-{QOPS[slot[1]][0]}-{slot[2]}-{slot[3]:04d}"
    if slot[0] == "graph":
        return f"graph-{slot[1]}-{slot[2]}-{slot[3]}-default-{index:04d}"
    if slot[0] == "pin":
        from pins import RULES

        engine = f"{slot[2]}-" if slot[2] else ""
        return f"pin-{RULES[slot[1]][0]}-{engine}{slot[3]}-{slot[4]:04d}"
    _, op, engine, mode, isa = slot
    return f"model-{op}-{engine}-{mode}-{isa}-{index:04d}"


def build_ops_plan(n_per_op):
    """The `ops` suite: n_per_op cases of every op in qops.QOPS, cycling through the engines.
    A case's data depends only on (seed, op, k), so adding an op adds cases and changes none."""
    from qops import ENGINES, QOPS

    plan = []
    for i, (op, _) in enumerate(QOPS):
        key = int.from_bytes(hashlib.sha256(op.encode()).digest()[:4], "big") << 16
        for k in range(n_per_op):
            plan.append((key + k, ("qop", i, ENGINES[k % len(ENGINES)], k), k // len(ENGINES)))
    return plan


# The graphs suite: engines and modes each model is captured with, in plan order (QAT on the two
# engines whose QAT qconfigs differ: fbgemm's reduce_range and qnnpack's full range).
GRAPH_VARIANTS = [("fbgemm", "ptq"), ("qnnpack", "ptq"), ("x86", "ptq"), ("fbgemm", "qat"),
                  ("qnnpack", "qat"), ("onednn", "ptq")]


def build_graphs_plan(n_cases):
    """The `graphs` suite: torchvision's quantizable models (graphs.MODELS) under GRAPH_VARIANTS,
    variant-major so that a small N still covers every model; at most one case per slot."""
    from graphs import MODELS

    slots = [("graph", model, engine, mode) for engine, mode in GRAPH_VARIANTS for model in MODELS]
    return [(i, s, 0) for i, s in enumerate(slots[:n_cases])]


def build_pins_plan(n_per_rule, rules=()):
    """The `pins` suite: n_per_rule cases of every rule in pins.RULES (or only of the tags in
    `rules`), cycling through its engine / ISA combinations. A case's data depends only on
    (seed, rule, k), so a filtered plan draws the same cases as the full one."""
    from pins import RULES

    unknown = sorted(set(rules) - {tag for tag, _ in RULES})
    if unknown:
        known = ", ".join(tag for tag, _ in RULES)
        sys.exit(f"unknown pin rule(s) {', '.join(unknown)}; the rules are: {known}")
    plan = []
    for i, (rule, combos) in enumerate(RULES):
        if rules and rule not in rules:
            continue
        key = int.from_bytes(hashlib.sha256(rule.encode()).digest()[:4], "big") << 16
        for k in range(n_per_rule):
            engine, isa = combos[k % len(combos)]
            plan.append((key + k, ("pin", i, engine, isa, k), k))
    return plan


# The `specials` suite: the primitives that take float inputs, each drawn by its core builder with
# about half of every input replaced by prims.SPECIALS (NaN, ±inf, values past 2^31 and 2^63 steps).
SPECIALS_PRIMITIVES = ["quantize_per_tensor", "quantize_per_channel", "decomposed_quantize_per_tensor",
                       "decomposed_quantize_per_channel", "fake_quantize_per_tensor_affine",
                       "fake_quantize_per_channel_affine", "fused_moving_avg_obs_fake_quant", "observer_minmax",
                       "observer_moving_average_minmax", "observer_per_channel_minmax",
                       "observer_moving_average_per_channel_minmax", "observer_histogram"]


def build_specials_plan(n_per_op):
    """n_per_op cases of every SPECIALS_PRIMITIVES entry; a case's data depends only on
    (seed, op, k)."""
    from prims import PRIMITIVES

    stems = [p[1] for p in PRIMITIVES]
    plan = []
    for stem in SPECIALS_PRIMITIVES:
        key = int.from_bytes(hashlib.sha256(("specials:" + stem).encode()).digest()[:4], "big") << 16
        for k in range(n_per_op):
            plan.append((key + k, ("primitive", stems.index(stem), k), k))
    return plan


def _rules(args):
    """The `--rules` filter of the pins suite as a list of tags (empty: every rule)."""
    rules = [r for r in args.rules.split(",") if r]
    if rules and args.suite != "pins":
        sys.exit("--rules filters the pins suite only")
    return rules


def _plan(suite, n_cases, rules=()):
    if suite == "graphs":
        return build_graphs_plan(n_cases)
    if suite == "pins":
        return build_pins_plan(n_cases, rules)
    if suite == "specials":
        return build_specials_plan(n_cases)
    return build_ops_plan(n_cases) if suite == "ops" else build_plan(n_cases)


def _draw_primitive(builder, rng, occ, suite):
    """builder(rng, occ); in the specials suite with special values mixed into half of the data.
    Where PyTorch refuses the data (e.g. the fused op's zero point from infinite running
    statistics), it draws again from the same rng, so still reproducibly, with a smaller share."""
    import prims

    if suite != "specials":
        prims.MIX_SPECIALS = 0.0
        return builder(rng, occ)
    for attempt in range(40):
        prims.MIX_SPECIALS = 0.5 * 0.8**attempt
        try:
            a, expected, tags = builder(rng, occ)
            return a, expected, tags + ["specials"]
        except RuntimeError:
            continue
    raise RuntimeError("PyTorch refused 40 draws of special values")


def check_registry(registry):
    """Every op this script writes must be one the Rust registry (`PrimOp`) knows."""
    from prims import PRIMITIVES
    from qops import QOPS

    known = set(registry.split(","))
    ours = {op for op, _, _ in PRIMITIVES} | {op for op, _ in QOPS} | {"quantized_linear"}
    unknown = sorted(ours - known)
    if unknown:
        sys.exit(f"golden.py: ops {unknown} are not in qparity's op registry (qparity::golden::PrimOp); "
                 "register them there first")


def _slot_isa(slot):
    if slot[0] == "pin":
        return slot[3]
    return "default" if slot[0] in ("primitive", "qop", "graph") else slot[4]


def _dump(obj, depth):
    """JSON with one entry per line, except that tensors and lists of scalars stay on one line."""
    compact = dict(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    pad = " " * (depth + 1)
    if isinstance(obj, dict) and obj and not ("dtype" in obj and "shape" in obj):
        items = [pad + json.dumps(k, **compact) + ": " + _dump(v, depth + 1) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    if isinstance(obj, list) and obj and any(isinstance(v, (dict, list)) for v in obj):
        items = [pad + _dump(v, depth + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * depth + "]"
    return json.dumps(obj, **compact)


def dump(obj):
    return _dump(obj, 0) + "\n"


def cmd_run(args):
    _setup_env(args.isa)
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from common import case_rng
    from models import model_case
    from pins import pin_case
    from prims import PRIMITIVES
    from qops import QOPS

    if args.registry:
        check_registry(args.registry)
    version = torch.__version__.split("+")[0]
    plan = _plan(args.suite, args.cases, _rules(args))
    print(f"PLAN {len(plan)}", flush=True)
    cases_dir = os.path.join(args.out, "cases")
    os.makedirs(cases_dir, exist_ok=True)
    for index, slot, occ in plan:
        if _slot_isa(slot) != args.isa:
            continue
        cid = _case_id(index, slot)
        rng = case_rng(args.seed, index)
        case = {"format": FORMAT, "id": cid, "kind": slot[0], "seed": args.seed, "torch_version": version,
                "isa": args.isa}
        if slot[0] == "primitive":
            op, _, builder = PRIMITIVES[slot[1]]
            a, expected, tags = _draw_primitive(builder, rng, occ, args.suite)
            case["kind"] = "primitive"
            case["tags"] = tags
            case["op"] = op
            case["args"] = a
            case["expected"] = expected
        elif slot[0] == "graph":
            from graphs import FORMAT2, model_graph_case

            _, model, engine, mode = slot
            case["format"] = FORMAT2
            case["tags"] = []
            case["op"] = model
            case.update(model_graph_case(model, engine, mode, args.seed, cid))
        elif slot[0] == "qop":
            op, builder = QOPS[slot[1]]
            torch.backends.quantized.engine = slot[2]
            a, expected, tags = builder(rng, occ, slot[2])
            case["kind"] = "primitive"
            case["tags"] = tags
            case["op"] = op
            case["args"] = a
            case["expected"] = expected
        elif slot[0] == "pin":
            op, a, expected, tags, (ours, alt, n) = pin_case(rng, slot[1], slot[2], slot[4])
            case["kind"] = "primitive"
            case["tags"] = tags
            case["op"] = op
            case["args"] = a
            case["expected"] = expected
            print(f"PIN {cid}: PyTorch equals the rule on {ours}/{n} outputs, the alternative on {alt}/{n}",
                  file=sys.stderr, flush=True)
        else:
            _, op, engine, mode, _ = slot
            body, tags = model_case(rng, op, engine, mode, occ)
            case["tags"] = tags
            case["op"] = op
            case.update(body)
        with open(os.path.join(cases_dir, cid + ".json"), "w", encoding="ascii", newline="\n") as f:
            f.write(dump(case))
        print(f"CASE {index} {len(plan)} {cid}", flush=True)


# Manifest flag name (Linux /proc/cpuinfo spelling) -> torch.cpu.get_capabilities() key (cpuinfo).
CPU_FLAGS = [("sse4_2", "sse4_2"), ("avx", "avx"), ("avx2", "avx2"), ("fma", "fma3"), ("f16c", "f16c"),
             ("avx512f", "avx512_f"), ("avx512bw", "avx512_bw"), ("avx512vl", "avx512_vl"),
             ("avx512dq", "avx512_dq"), ("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"),
             ("avx512_bf16", "avx512_bf16"), ("amx_int8", "amx_int8"), ("amx_bf16", "amx_bf16")]


def cpu_description():
    """The CPU as this process sees it through cpuinfo, the library FBGEMM and PyTorch dispatch
    on (so under qemu-user: the emulated CPU, not the host's /proc/cpuinfo)."""
    import torch

    caps = torch.cpu.get_capabilities()
    flags = [name for name, key in CPU_FLAGS if caps.get(key) is True]
    source = "cpuinfo"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    if cap.upper() in ("AVX512_CORE_VNNI", "AVX512_CORE_BF16"):
        # `--emulate vnni-xeon`: oneDNN (the only int8 library here with AMX kernels) is capped
        # below AMX, so the capture is one of an AVX-512 VNNI Xeon without AMX.
        flags = [f for f in flags if not f.startswith("amx_")]
        source = f"cpuinfo, amx flags dropped (ONEDNN_MAX_CPU_ISA={cap})"
    elif cap:
        raise SystemExit(f"ONEDNN_MAX_CPU_ISA={cap}: only AVX512_CORE_VNNI / AVX512_CORE_BF16 "
                         "caps describe a known CPU class")
    return {"cpu_flags": flags,
            "cpu_flags_source": source,
            "cpu_name": str(caps.get("cpu_name", "")),
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def cmd_manifest(args):
    import platform

    import torch

    from rng import GENERATOR

    rules = _rules(args)
    cases_dir = os.path.join(args.out, "cases")
    files = {}
    counts = {}
    for name in sorted(os.listdir(cases_dir)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(cases_dir, name)
        with open(path, "rb") as f:
            raw = f.read()
        files["cases/" + name] = hashlib.sha256(raw).hexdigest()
        case = json.loads(raw)
        if case["kind"] == "primitive":
            engine = case["args"].get("engine", "-") if isinstance(case.get("args"), dict) else "-"
            key = f"primitive/{case['op']}/{engine}/-/{case['isa']}"
        else:
            key = f"model/{case['op']}/{case['engine']}/{case['mode']}/{case['isa']}"
        counts[key] = counts.get(key, 0) + 1
    lines = "".join(f"{p} {h}\n" for p, h in sorted(files.items()))
    manifest = {
        "format": FORMAT,
        "torch_version": torch.__version__.split("+")[0],
        "torch_version_full": torch.__version__,
        "python_version": platform.python_version(),
        **cpu_description(),
        "emulator": args.emulator or None,
        "generator": GENERATOR,
        "suite": args.suite,
        "plan_cases": args.plan_cases,
        **({"rules": rules} if rules else {}),
        "seed": args.seed,
        "cases": len(files),
        "counts": dict(sorted(counts.items())),
        "files": files,
        "content_hash": hashlib.sha256(lines.encode()).hexdigest(),
    }
    with open(os.path.join(args.out, "MANIFEST.json"), "w", encoding="ascii", newline="\n") as f:
        f.write(dump(manifest))
    print(f"MANIFEST {len(files)} cases")


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--seed", type=int, required=True)
    r.add_argument("--cases", type=int, required=True)
    r.add_argument("--isa", choices=ISAS, required=True)
    r.add_argument("--suite", choices=("core", "ops", "graphs", "pins", "specials"), default="core")
    r.add_argument("--registry", default="")
    m = sub.add_parser("manifest")
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, required=True)
    m.add_argument("--emulator", default="")
    m.add_argument("--suite", choices=("core", "ops", "graphs", "pins", "specials"), default="core")
    m.add_argument("--plan-cases", type=int, required=True)
    sub.add_parser("cpu")
    sub.add_parser("self-test")
    p = sub.add_parser("plan")
    p.add_argument("--cases", type=int, required=True)
    p.add_argument("--suite", choices=("core", "ops", "graphs", "pins", "specials"), default="core")
    for sp in (r, m, p):
        sp.add_argument("--rules", default="", help="pins suite: comma-separated rule tags (default: all)")
    args = ap.parse_args()
    if args.cmd == "run":
        cmd_run(args)
    elif args.cmd == "manifest":
        cmd_manifest(args)
    elif args.cmd == "cpu":
        print(json.dumps(cpu_description()))
    elif args.cmd == "self-test":
        from rng import self_test

        print("SELFTEST " + json.dumps(self_test()))
    else:
        counts = {isa: 0 for isa in ISAS}
        for _, slot, _ in _plan(args.suite, args.cases, _rules(args)):
            counts[_slot_isa(slot)] += 1
        for isa, n in counts.items():
            print(f"ISA {isa} {n}")


if __name__ == "__main__":
    main()

//! tract-onnx as a qparity runtime: each stage becomes a one-node QLinearConv ONNX model (a
//! linear layer `[M, K]` as a 1×1 QLinearConv over `[M, K, 1, 1]`, the int32 bias as its `B`; a
//! fused ReLU as `Max(y, zp_y)`), optimized and run by tract. Implements qparity's `Runtime`
//! trait and serves the JSON-lines protocol on stdin / stdout (docs/RUNTIMES.md).

use qparity::runtime::{QStage, Runtime, RuntimeInfo, RuntimeOutput, StageOp};
use tract_onnx::pb::{self, tensor_proto::DataType};
use tract_onnx::prelude::*;

fn tensor(name: &str, dt: DataType, dims: &[usize], raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        data_type: dt as i32,
        dims: dims.iter().map(|&d| d as i64).collect(),
        raw_data: raw,
        ..Default::default()
    }
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn value_info(name: &str, dt: DataType, dims: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: dt as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

/// The stage as an ONNX model, with its input's and output's 4-D shapes.
fn model(s: &QStage) -> (pb::ModelProto, Vec<usize>, Vec<usize>) {
    let w = s.weight.shape();
    let oc = w[0];
    let (x_shape, w_shape, y_shape, attrs) = match s.op {
        StageOp::Linear => {
            let k = w[1];
            let m = s.input.len() / k.max(1);
            (
                vec![m, k, 1, 1],
                vec![oc, k, 1, 1],
                vec![m, oc, 1, 1],
                vec![ints("kernel_shape", &[1, 1])],
            )
        }
        StageOp::Conv2d(p) => {
            let (ph, pw) = (p.padding[0] as i64, p.padding[1] as i64);
            (
                s.input.shape().to_vec(),
                w.to_vec(),
                s.output_shape.clone(),
                vec![
                    ints("kernel_shape", &[w[2] as i64, w[3] as i64]),
                    ints("strides", &[p.stride[0] as i64, p.stride[1] as i64]),
                    ints("pads", &[ph, pw, ph, pw]),
                    ints("dilations", &[p.dilation[0] as i64, p.dilation[1] as i64]),
                    int("group", p.groups as i64),
                ],
            )
        }
    };
    let per_channel = s.per_channel();
    let qdims: &[usize] = if per_channel { &[oc] } else { &[] };
    let wz: Vec<u8> = if per_channel {
        (0..oc)
            .map(|j| s.weight_zero_point(j) as i8 as u8)
            .collect()
    } else {
        vec![s.weight_zero_points[0] as i8 as u8]
    };
    let ws: Vec<f32> = if per_channel {
        (0..oc).map(|j| s.weight_scale(j)).collect()
    } else {
        vec![s.weight_scales[0]]
    };
    let mut init = vec![
        tensor(
            "x_scale",
            DataType::Float,
            &[],
            f32s(&[s.input_scale as f32]),
        ),
        tensor("x_zp", DataType::Uint8, &[], vec![s.input_zero_point as u8]),
        tensor(
            "w",
            DataType::Int8,
            &w_shape,
            s.weight.iter().map(|&v| v as u8).collect(),
        ),
        tensor("w_scale", DataType::Float, qdims, f32s(&ws)),
        tensor("w_zp", DataType::Int8, qdims, wz),
        tensor(
            "y_scale",
            DataType::Float,
            &[],
            f32s(&[s.output_scale as f32]),
        ),
        tensor(
            "y_zp",
            DataType::Uint8,
            &[],
            vec![s.output_zero_point as u8],
        ),
    ];
    let mut ins = vec![
        "x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp",
    ];
    if let Some(b) = &s.bias_i32 {
        init.push(tensor(
            "b",
            DataType::Int32,
            &[oc],
            b.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ));
        ins.push("b");
    }
    let mut nodes = vec![node("QLinearConv", &ins, "y0", attrs)];
    let mut last = "y0";
    if s.relu {
        nodes.push(node("Max", &["y0", "y_zp"], "y1", vec![]));
        last = "y1";
    }
    nodes.push(node("Identity", &[last], "y", vec![]));
    let graph = pb::GraphProto {
        name: "stage".into(),
        node: nodes,
        initializer: init,
        input: vec![value_info("x", DataType::Uint8, &x_shape)],
        output: vec![value_info("y", DataType::Uint8, &y_shape)],
        ..Default::default()
    };
    let proto = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(graph),
        ..Default::default()
    };
    (proto, x_shape, y_shape)
}

fn run_stage(s: &QStage) -> TractResult<Vec<u8>> {
    let (proto, x_shape, _) = model(s);
    let plan = tract_onnx::onnx()
        .model_for_proto_model(&proto)?
        .into_optimized()?
        .into_runnable()?;
    let x = tract_ndarray::ArrayD::from_shape_vec(x_shape, s.input.iter().copied().collect())?;
    let out = plan.run(tvec!(Tensor::from(x).into()))?;
    let y = out[0].cast_to_dt(u8::datum_type())?;
    Ok(y.to_plain_array_view::<u8>()?.iter().copied().collect())
}

struct Tract;

impl Runtime for Tract {
    fn info(&self) -> RuntimeInfo {
        let isa = if std::arch::is_x86_feature_detected!("avx512vnni") {
            "avx512vnni"
        } else if std::arch::is_x86_feature_detected!("avx512f") {
            "avx512"
        } else if std::arch::is_x86_feature_detected!("avx2") {
            "avx2"
        } else {
            "sse"
        };
        RuntimeInfo {
            name: "tract-onnx".into(),
            version: "0.23.9".into(),
            isa: isa.into(),
        }
    }

    fn run(&mut self, s: &QStage) -> qparity::Result<Option<RuntimeOutput>> {
        let y = run_stage(s)
            .map_err(|e| qparity::Error::invalid("tract", format!("{}: {e:#}", s.id)))?;
        let output = ndarray::ArrayD::from_shape_vec(s.output_shape.clone(), y)
            .map_err(|e| qparity::Error::shape("tract output", e.to_string()))?;
        Ok(Some(RuntimeOutput {
            output,
            accumulators: None,
        }))
    }
}

fn main() {
    let stdin = std::io::stdin().lock();
    if let Err(e) = qparity::runtime::protocol::serve(&mut Tract, stdin, std::io::stdout().lock()) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
}

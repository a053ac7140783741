//! Random linear / conv2d stages for a runtime (`qparity runtime-check --random N`): layers from
//! the property suites' generator ([`LayerCase`]'s `Arbitrary`, fed by [`SplitMix64`]), planned
//! under `convert_fx`, with PyTorch's output as qparity's model predicts it (the model the golden
//! suite proves equal to PyTorch on every committed golden set).

use super::{LayerCase, SplitMix64};
use crate::engine::flow::Flow;
use crate::engine::{CpuFeatures, Ctx, Engine, Isa};
use crate::numerics::bound::Pred;
use crate::ops::layer::IntegerLayer;
use crate::ops::{Predicted, QTensor};
use crate::runtime::{layer_stage, QStage};
use crate::{Error, Result};
use arbitrary::{Arbitrary, Unstructured};

/// A stage, PyTorch's planned layer, its input and PyTorch's output (flat, f64).
pub type RandomStage = (QStage, IntegerLayer, QTensor, Vec<f64>);

/// Bytes handed to the generator per stage (it takes at most 512 for a conv and `m·k + n·k` for a
/// GEMM; a short tail only makes the remaining choices default).
const BYTES_PER_STAGE: usize = 4096;

/// `n` random stages under `engine`'s `convert_fx` on a CPU with `cpu`'s features, from `seed`
/// (the same seed, engine and CPU give the same stages): linear, conv2d, grouped and depthwise
/// conv2d, per-tensor and per-channel weights, bias or not, fused ReLU or not, activations and
/// weights biased toward int16 pair saturation and the quant range's ends.
pub fn random_stages(
    engine: Engine,
    cpu: CpuFeatures,
    seed: u64,
    n: usize,
) -> Result<Vec<RandomStage>> {
    if !matches!(engine, Engine::Fbgemm | Engine::Qnnpack) {
        return Err(Error::invalid(
            "random stages",
            format!(
                "{} has no runtime stages (fbgemm or qnnpack)",
                engine.name()
            ),
        ));
    }
    let ctx = Ctx {
        flow: Flow::ConvertFx,
        engine,
        isa: if cpu.avx512_vnni {
            Isa::Vnni
        } else {
            Isa::Avx2
        },
        cpu,
    };
    let mut rng = SplitMix64::new(seed ^ (engine as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = Vec::with_capacity(n);
    for s in 0..n {
        let bytes: Vec<u8> = rng.u8s(BYTES_PER_STAGE);
        let case = LayerCase::arbitrary(&mut Unstructured::new(&bytes))
            .map_err(|e| Error::invalid("random stage", e.to_string()))?;
        let id = format!("random seed {seed} stage {s}");
        let (qs, layer) = layer_stage(&id, &ctx, &case.layer, &case.input, &case.out)?;
        let expected = match layer.predict(&case.input, None)?.values {
            Predicted::Ints(p) => p
                .iter()
                .map(|p| match p {
                    Pred::Exact(v) => Ok(*v as f64),
                    other => Err(Error::invalid(
                        &id,
                        format!("qparity's prediction is not exact: {other:?}"),
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            _ => return Err(Error::invalid(&id, "the layer predicts no integers")),
        };
        out.push((qs, layer, case.input, expected));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::StageOp;

    #[test]
    fn stages_are_deterministic_varied_and_consistent() {
        for engine in [Engine::Fbgemm, Engine::Qnnpack] {
            let a = random_stages(engine, CpuFeatures::AVX512_VNNI, 3, 40).unwrap();
            let b = random_stages(engine, CpuFeatures::AVX512_VNNI, 3, 40).unwrap();
            let c = random_stages(engine, CpuFeatures::AVX512_VNNI, 4, 40).unwrap();
            assert_eq!(a.len(), 40);
            assert!(a.iter().zip(&b).all(|(x, y)| x.0 == y.0 && x.3 == y.3));
            assert!(a.iter().zip(&c).any(|(x, y)| x.0 != y.0));
            let kinds: std::collections::BTreeSet<_> = a.iter().map(|s| s.0.op.kind()).collect();
            assert!(
                kinds.contains("linear") && kinds.contains("conv2d"),
                "{kinds:?}"
            );
            assert!(a.iter().any(|s| s.0.per_channel()));
            assert!(a.iter().any(|s| s.0.relu) && a.iter().any(|s| !s.0.relu));
            for (qs, _, input, expected) in &a {
                assert_eq!(qs.engine, engine);
                let n: usize = qs.output_shape.iter().product();
                assert_eq!(expected.len(), n, "{}", qs.id);
                assert!(expected.iter().all(|&v| (0.0..=255.0).contains(&v)));
                assert_eq!(qs.input.len(), input.data.len());
                if let StageOp::Conv2d(p) = qs.op {
                    assert_eq!(qs.input.shape()[1], p.in_channels);
                }
            }
        }
    }

    #[test]
    fn other_engines_are_refused() {
        let e = random_stages(Engine::Onednn, CpuFeatures::AVX512_VNNI, 0, 1).unwrap_err();
        assert!(e.to_string().contains("fbgemm or qnnpack"), "{e}");
    }
}

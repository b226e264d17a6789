use super::Activation;

/// `act(x)` for one value; the reference for every vectorised activation.
#[inline(always)]
pub fn act_scalar(act: Activation, x: f32) -> f32 {
    match act {
        Activation::None => x,
        Activation::Relu => x.max(0.0),
        Activation::Relu6 => x.clamp(0.0, 6.0),
        Activation::Sigmoid => 1.0 / (1.0 + libm::expf(-x)),
        Activation::Tanh => libm::tanhf(x),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erff(x * core::f32::consts::FRAC_1_SQRT_2)),
        Activation::Silu => x / (1.0 + libm::expf(-x)),
        Activation::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        Activation::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
        Activation::LeakyRelu { alpha } => {
            if x >= 0.0 {
                x
            } else {
                alpha * x
            }
        }
    }
}

/// How a micro-kernel epilogue applies `act`: `(clamp, lo, hi, post)`, clamping to `[lo, hi]`
/// in registers for the activations that are a clamp (none, ReLU, ReLU6), or `post`: apply
/// [`act_scalar`] to the stored tile.
pub(crate) fn act_clamp(act: Activation) -> (bool, f32, f32, bool) {
    match act {
        Activation::None => (false, f32::NEG_INFINITY, f32::INFINITY, false),
        Activation::Relu => (true, 0.0, f32::INFINITY, false),
        Activation::Relu6 => (true, 0.0, 6.0, false),
        _ => (false, f32::NEG_INFINITY, f32::INFINITY, true),
    }
}

/// Applies `act` in place.
pub fn apply_act(act: Activation, xs: &mut [f32]) {
    match act {
        Activation::None => {}
        Activation::Relu => xs.iter_mut().for_each(|x| *x = x.max(0.0)),
        Activation::Relu6 => xs.iter_mut().for_each(|x| *x = x.clamp(0.0, 6.0)),
        _ => xs.iter_mut().for_each(|x| *x = act_scalar(act, *x)),
    }
}

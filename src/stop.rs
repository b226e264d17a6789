//! The stop rule: a paired, per-example comparison of a pruned model with the dense one on the
//! same examples, with its uncertainty.
//!
//! **Accuracy drop.** Over `n` labelled examples, `lost` are right in the dense model and
//! wrong in the pruned one, `gained` the reverse. The drop `D = (lost − gained) / n` is the
//! mean of a paired difference; its interval is the Agresti–Min adjusted Wald interval for
//! matched proportions (half an example added to each cell of the 2×2 table), which stays
//! sensible when only a handful of examples disagree:
//! `D' = (lost − gained) / (n + 2)`, `se = √((lost + gained + 1) − (lost − gained)² / (n + 2)) / (n + 2)`.
//! Without labels the drop is bounded by the share of examples whose top-1 class changed (any
//! accuracy lost must come from a changed prediction), and that share is used instead.
//!
//! **Decision.** A step is accepted when the one-sided upper confidence bound of the drop,
//! `D' + z_c · se`, is at most the tolerance (`c` the confidence, 95 % by default): the data
//! must *show* that the drop is within the tolerance, not merely fail to show that it is not.
//! An optional budget on the mean KL divergence from the dense model's predictions (no labels
//! needed) must hold the same way. When even a model that changes nothing but the examples the
//! validation set cannot tell apart could not pass, the tolerance is below what the set
//! resolves and [`resolution`] says so.

use serde::{Deserialize, Serialize};

use crate::eval;
use crate::util::argmax;

/// A paired comparison of a model with a reference on the same examples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    pub n: usize,
    /// Whether `lost`/`gained` count correctness against labels (else top-1 changes).
    pub labelled: bool,
    /// Right in the reference, wrong in the model (labelled), or top-1 changed (unlabelled).
    pub lost: usize,
    /// Wrong in the reference, right in the model (0 without labels).
    pub gained: usize,
    /// Examples whose top-1 class differs.
    pub disagree: usize,
    /// Point estimate of the accuracy drop (fraction; negative: the model is better).
    pub drop: f64,
    /// Standard error of the adjusted estimate.
    pub se: f64,
    /// Mean `KL(reference ‖ model)` in nats, and its standard error.
    pub kl: f64,
    pub kl_se: f64,
    /// Mean change of the cross-entropy (model − reference) and its standard error (0 without
    /// labels).
    pub dloss: f64,
    pub dloss_se: f64,
}

#[allow(clippy::excessive_precision)] // the published coefficients
fn z_of(confidence: f64) -> f64 {
    // Acklam's rational approximation of the standard normal quantile (|error| < 1.2e-9).
    let p = confidence.clamp(1e-12, 1.0 - 1e-12);
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383577518672690e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The standard normal quantile of `confidence` (one-sided).
pub fn z(confidence: f64) -> f64 {
    z_of(confidence)
}

fn mean_se(xs: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let (mut n, mut s, mut s2) = (0f64, 0f64, 0f64);
    for x in xs {
        n += 1.0;
        s += x;
        s2 += x * x;
    }
    if n < 1.0 {
        return (0.0, 0.0);
    }
    let mean = s / n;
    let var = if n > 1.0 {
        ((s2 - n * mean * mean) / (n - 1.0)).max(0.0)
    } else {
        0.0
    };
    (mean, (var / n).sqrt())
}

impl Paired {
    /// Compares `model` logits with `reference` logits, row by row (`classes` per row), on
    /// examples with `labels` if given.
    pub fn compare(
        model: &[f32],
        reference: &[f32],
        labels: Option<&[crate::data::Label]>,
        classes: usize,
    ) -> Self {
        let rows: Vec<(&[f32], &[f32])> = model
            .chunks(classes)
            .zip(reference.chunks(classes))
            .collect();
        let n = rows.len();
        let (mut lost, mut gained, mut disagree) = (0, 0, 0);
        for (k, (a, b)) in rows.iter().enumerate() {
            let (pa, pb) = (argmax(a), argmax(b));
            if pa != pb {
                disagree += 1;
            }
            if let Some(y) = labels {
                let y = y[k] as usize;
                match (pb == y, pa == y) {
                    (true, false) => lost += 1,
                    (false, true) => gained += 1,
                    _ => {}
                }
            }
        }
        let labelled = labels.is_some();
        if !labelled {
            lost = disagree;
        }
        let kl: Vec<f64> = rows
            .iter()
            .map(|(a, b)| eval::kl_divergence(a, b, classes))
            .collect();
        let (kl, kl_se) = mean_se(kl.iter().copied());
        let (dloss, dloss_se) = match labels {
            Some(y) => {
                let d: Vec<f64> = rows
                    .iter()
                    .zip(y)
                    .map(|((a, b), &l)| {
                        eval::cross_entropy(a, &[l], classes)
                            - eval::cross_entropy(b, &[l], classes)
                    })
                    .collect();
                mean_se(d.iter().copied())
            }
            None => (0.0, 0.0),
        };
        let mut p = Paired {
            n,
            labelled,
            lost,
            gained,
            disagree,
            kl,
            kl_se,
            dloss,
            dloss_se,
            ..Default::default()
        };
        p.drop = (lost as f64 - gained as f64) / n.max(1) as f64;
        p.se = p.adjusted().1;
        p
    }

    /// The Agresti–Min adjusted estimate and its standard error.
    fn adjusted(&self) -> (f64, f64) {
        let n2 = self.n as f64 + 2.0;
        let diff = self.lost as f64 - self.gained as f64;
        let disc = self.lost as f64 + self.gained as f64 + 1.0;
        (diff / n2, (disc - diff * diff / n2).max(0.0).sqrt() / n2)
    }

    /// One-sided upper confidence bound of the drop.
    pub fn upper(&self, confidence: f64) -> f64 {
        let (d, se) = self.adjusted();
        d + z(confidence) * se
    }

    /// Two-sided interval of the drop at `level` (0.95: the 95 % interval).
    pub fn interval(&self, level: f64) -> (f64, f64) {
        let (d, se) = self.adjusted();
        let zz = z(0.5 + level / 2.0);
        (d - zz * se, d + zz * se)
    }

    /// One-sided upper confidence bound of the mean KL divergence.
    pub fn kl_upper(&self, confidence: f64) -> f64 {
        self.kl + z(confidence) * self.kl_se
    }
}

/// What the schedule accepts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopRule {
    /// Tolerated accuracy drop (fraction); `None`: no accuracy condition.
    pub max_drop: Option<f64>,
    /// Tolerated mean KL divergence from the dense model's predictions (nats).
    pub max_kl: Option<f64>,
    /// One-sided confidence of the bounds (0.5: the point estimates).
    pub confidence: f64,
}

/// Why a comparison passes or fails the rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub accept: bool,
    /// The bound compared with the tolerance (accuracy), if any.
    pub drop_bound: Option<f64>,
    pub kl_bound: Option<f64>,
}

impl StopRule {
    pub fn judge(&self, p: &Paired) -> Verdict {
        let drop_bound = self.max_drop.map(|_| p.upper(self.confidence));
        let kl_bound = self.max_kl.map(|_| p.kl_upper(self.confidence));
        let ok_drop = match (self.max_drop, drop_bound) {
            (Some(t), Some(b)) => b <= t + 1e-12,
            _ => true,
        };
        let ok_kl = match (self.max_kl, kl_bound) {
            (Some(t), Some(b)) => b <= t,
            _ => true,
        };
        Verdict {
            accept: ok_drop && ok_kl,
            drop_bound,
            kl_bound,
        }
    }
}

/// The smallest tolerance a comparison with `disagreeing` discordant examples out of `n` can
/// pass at `confidence` when the model is exactly as accurate as the reference (as many lost
/// as gained).
pub fn resolution(n: usize, disagreeing: usize, confidence: f64) -> f64 {
    let n2 = n as f64 + 2.0;
    z(confidence) * ((disagreeing as f64 + 1.0).sqrt()) / n2
}

/// A warning when `max_drop` is below what `n` examples resolve at `confidence`, given a
/// typical number of discordant examples (`expected_discordant`).
pub fn resolution_warning(
    max_drop: f64,
    n: usize,
    expected_discordant: usize,
    confidence: f64,
) -> Option<String> {
    let r = resolution(n, expected_discordant, confidence);
    (max_drop < r).then(|| {
        format!(
            "--max-drop {:.3}% is below what {n} validation examples resolve: with {expected_discordant} examples on which the models differ, a pruned model exactly as accurate as the dense one has a {:.0}% upper bound of {:.3}%; steps are accepted only where the pruned model is measurably better, so expect little pruning (use more validation data, a larger tolerance, or --confidence)",
            100.0 * max_drop,
            100.0 * confidence,
            100.0 * r
        )
    })
}

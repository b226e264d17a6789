//! The `nap` binary: the demo, conversions, and clear non-zero exits on bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn nap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nap"))
        .args(args)
        .output()
        .unwrap()
}

/// Asserts that `o` failed and said `needle`.
fn fails_with(o: &Output, needle: &str) {
    assert!(
        !o.status.success() && text(o).contains(needle),
        "{}",
        text(o)
    );
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_checkpoint(
    dir: &Path,
    arch: &str,
    mutate: impl FnOnce(&mut Vec<nap::ir::HostTensor>),
) -> std::path::PathBuf {
    let m = nap::archs::random(arch, 1).unwrap();
    let mut named = m.tensors.clone();
    mutate(&mut named);
    let p = dir.join(format!("{arch}.safetensors"));
    nap::import::write_safetensors(&p, &named).unwrap();
    p
}

/// A digits CNN trained for six epochs on the digits' training split, in `dir`.
fn train_digits(dir: &Path) -> std::path::PathBuf {
    let ckpt = dir.join("dense.safetensors");
    let o = nap(&[
        "train",
        "--arch",
        "digits-cnn",
        "--data",
        "digits",
        "--split",
        "train",
        "--epochs",
        "6",
        "-o",
        ckpt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    ckpt
}

/// `nap convert CKPT --arch ARCH -o OUT EXTRA...`, which must succeed.
fn convert(ckpt: &Path, arch: &str, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "convert",
        ckpt.to_str().unwrap(),
        "--arch",
        arch,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let o = nap(&args);
    assert!(o.status.success(), "{}", text(&o));
}

/// A random `arch` checkpoint converted to `.nap` in `dir`: (checkpoint, model).
fn converted(dir: &Path, arch: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let ckpt = write_checkpoint(dir, arch, |_| {});
    let out = dir.join("m.nap");
    convert(&ckpt, arch, &out, &[]);
    (ckpt, out)
}

#[test]
fn demo_trains_exports_and_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.nap");
    let o = nap(&[
        "demo",
        "--epochs",
        "4",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["agreement"]["max_rel_err"].as_f64().unwrap() <= 1e-4);
    assert_eq!(r["agreement"]["top1_mismatches"], 0);
    assert!(r["runtime_accuracy"].as_f64().unwrap() > 0.8, "{r}");
    assert!(out.exists());
    let p = &r["pruning"];
    assert!(p["compression"].as_f64().unwrap() > 1.0, "{p}");
    assert_eq!(p["test_accuracy"], p["runtime_test_accuracy"]);
    assert!(
        p["val_accuracy"].as_f64().unwrap()
            >= p["val_accuracy_dense"].as_f64().unwrap() - 0.01 - 1e-6,
        "{p}"
    );
    assert!(dir.path().join("demo.prune/pruned.nap").exists());
}

/// `nap prune` end to end on the digits: JSON report, checkpoints, --resume, and clear errors.
#[test]
fn prune_reports_resumes_and_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = train_digits(dir.path());
    let run = dir.path().join("run");
    let args = |steps: &'static str| -> Vec<String> {
        [
            "prune",
            ckpt.to_str().unwrap(),
            "--arch",
            "digits-cnn",
            "--data",
            "digits",
            "-o",
            run.to_str().unwrap(),
            "--max-drop",
            "2%",
            "--stats-examples",
            "300",
            "--max-steps",
            steps,
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let argv = args("2");
    let o = nap(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["state"]["steps"].as_array().unwrap().len(), 2);
    assert_eq!(r["layers"].as_array().unwrap().len(), 3);
    // The final model against the dense one on the validation split (decided on), the
    // confirmation split and the test set, with 95 % intervals around the drop.
    let splits: Vec<&str> = r["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["split"].as_str().unwrap())
        .collect();
    assert_eq!(splits, ["validation", "confirmation", "test"]);
    for c in r["comparisons"].as_array().unwrap() {
        let (lo, hi) = (
            c["interval95"][0].as_f64().unwrap(),
            c["interval95"][1].as_f64().unwrap(),
        );
        assert!(lo <= c["drop"].as_f64().unwrap() + 1e-9 && hi >= lo, "{c}");
    }
    assert!(r["state"]["final_paired"]["n"].as_u64().unwrap() > 0);
    assert_eq!(
        r["pruned"]["test_accuracy"], r["pruned"]["runtime_test_accuracy"],
        "{}",
        r["pruned"]
    );
    for f in [
        "pruned.nap",
        "pruned.safetensors",
        "report.json",
        "accuracy.svg",
        "density.svg",
        "state.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // The same folder again: refused without --resume, continued with it.
    let o = nap(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(text(&o).contains("--resume"), "{}", text(&o));
    let mut more = args("3");
    more.push("--resume".into());
    let o = nap(&more.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["state"]["steps"].as_array().unwrap().len(), 3);
    // Bad input.
    for (bad, needle) in [
        (vec!["--max-drop", "lots"], "--max-drop"),
        (vec!["--target-sparsity", "1.5"], "--target-sparsity"),
        (vec!["--device", "tpu"], "unknown device"),
        (vec!["--device", "cuda"], "cuda"),
        (vec!["--block", "1x4"], "one column wide"),
        (vec!["--block", "four"], "--block"),
        (vec!["--block", "0x1"], "--block"),
        (vec!["--policy", "/nonexistent/device.json"], "device.json"),
        (vec!["--confidence", "1.5"], "--confidence"),
        (vec!["--budget", "soon"], "--budget"),
        (vec!["--budget=-3"], "--budget"),
        (vec!["--distill", "2"], "--distill"),
        (
            vec!["--criterion", "gmp", "--schedule", "iterative"],
            "gradual",
        ),
        (
            vec!["--schedule", "gradual", "--ft-epochs", "0"],
            "--ft-epochs",
        ),
        (vec!["--confirm-fraction", "0.95"], "--confirm-fraction"),
    ] {
        let mut a = args("1");
        a[7] = dir.path().join("other").to_str().unwrap().to_string();
        a.extend(bad.iter().map(|s| s.to_string()));
        let o = nap(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!o.status.success(), "{bad:?} was accepted");
        assert!(text(&o).contains(needle), "{bad:?}: {}", text(&o));
    }
    let o = nap(&[
        "prune",
        ckpt.to_str().unwrap(),
        "--arch",
        "mnist-cnn",
        "--data",
        "digits",
        "-o",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
}

#[test]
fn convert_inspect_run_eval() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, out) = converted(dir.path(), "digits-cnn");
    let o = nap(&["inspect", out.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["arch"], "digits-cnn");
    assert_eq!(
        r["params"].as_u64().unwrap() as usize,
        nap::archs::random("digits-cnn", 1).unwrap().param_count()
    );
    let o = nap(&[
        "run",
        out.to_str().unwrap(),
        "--input",
        "digits:3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["top"].as_array().unwrap().len(), 5);
    let o = nap(&["eval", out.to_str().unwrap(), "--data", "digits", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = nap(&[
        "eval",
        ckpt.to_str().unwrap(),
        "--arch",
        "digits-cnn",
        "--data",
        "digits",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn wrong_architecture_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = write_checkpoint(dir.path(), "lenet-300-100", |_| {});
    let out = dir.path().join("m.nap");
    let o = nap(&[
        "convert",
        ckpt.to_str().unwrap(),
        "--arch",
        "mnist-cnn",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("wrong --arch"), "{}", text(&o));
    assert!(
        !out.exists(),
        "a failed conversion must not leave an output"
    );
}

#[test]
fn nan_weights_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = write_checkpoint(dir.path(), "lenet-300-100", |t| t[2].data[17] = f32::NAN);
    let o = nap(&[
        "convert",
        ckpt.to_str().unwrap(),
        "--arch",
        "lenet-300-100",
        "-o",
        dir.path().join("m.nap").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("non-finite"), "{}", text(&o));
}

#[test]
fn corrupted_and_truncated_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, good) = converted(dir.path(), "digits-cnn");
    let bytes = std::fs::read(&good).unwrap();
    let trunc = dir.path().join("t.nap");
    std::fs::write(&trunc, &bytes[..bytes.len() - 10]).unwrap();
    let o = nap(&["inspect", trunc.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("truncated"), "{}", text(&o));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x40;
    let bad = dir.path().join("b.nap");
    std::fs::write(&bad, &flipped).unwrap();
    let o = nap(&["run", bad.to_str().unwrap(), "--input", "digits:0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("checksum"), "{}", text(&o));
    let o = nap(&["inspect", ckpt.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not a .nap file"), "{}", text(&o));
}

#[test]
fn input_of_the_wrong_size_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, m) = converted(dir.path(), "digits-cnn");
    let raw = dir.path().join("x.f32");
    std::fs::write(&raw, vec![0u8; 4 * 10]).unwrap();
    let o = nap(&["run", m.to_str().unwrap(), "--input", raw.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("the model takes"), "{}", text(&o));
}

/// `nap bench --vs`: a LeNet-300-100 with 95 % of fc1 and fc2 zeroed against its dense original.
/// The FLOP reduction must equal the count from the weights; the timings must be ordered and the
/// per-node table must cover both graphs.
#[test]
fn bench_times_pruned_against_dense() {
    let dir = tempfile::tempdir().unwrap();
    let mut stored = 0usize;
    let mut dense_w = 0usize;
    let ckpt = write_checkpoint(dir.path(), "lenet-300-100", |named| {
        for t in named.iter_mut().filter(|t| t.name.ends_with("weight")) {
            dense_w += t.data.len();
            if t.name.starts_with("fc3") {
                stored += t.data.len();
                continue;
            }
            for (i, v) in t.data.iter_mut().enumerate() {
                if i % 20 != 7 {
                    *v = 0.0;
                }
            }
            stored += t.data.iter().filter(|v| **v != 0.0).count();
        }
    });
    let pruned = dir.path().join("pruned.nap");
    let dense = dir.path().join("dense.nap");
    convert(&ckpt, "lenet-300-100", &pruned, &[]);
    convert(&ckpt, "lenet-300-100", &dense, &["--dense"]);
    let (p, d) = (pruned.to_str().unwrap(), dense.to_str().unwrap());
    let o = nap(&["bench", p, "--vs", d, "--runs", "30", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = dense_w as f64 / stored as f64;
    let got = r["flop_reduction"].as_f64().unwrap();
    assert!(
        (got - want).abs() < 1e-9 * want,
        "FLOP reduction {got}, want {want}"
    );
    let speedup = r["speedup"].as_f64().unwrap();
    assert!(speedup.is_finite() && speedup > 0.0, "speedup {speedup}");
    for m in [&r["model"], &r["baseline"]] {
        let l = &m["latency"];
        let q = |k: &str| l[k].as_f64().unwrap();
        assert_eq!(l["runs"], 30);
        assert!(0.0 < q("min_ms") && q("min_ms") <= q("p10_ms") && q("p10_ms") <= q("median_ms"));
        assert!(q("median_ms") <= q("p90_ms"), "{l}");
        let names: Vec<&str> = m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["flatten", "fc1", "fc2", "fc3"]);
    }
    assert_eq!(r["model"]["nodes"][1]["storage"], "csr f32");
    assert_eq!(r["baseline"]["nodes"][1]["storage"], "dense f32");
    assert_eq!(r["model"]["nodes"][1]["ran"], "sparse");
    assert_eq!(r["model"]["nodes"][3]["ran"], "dense");
    assert_eq!(r["model"]["nodes"][0]["ran"], "");
    assert_eq!(r["baseline"]["nodes"][1]["ran"], "dense");
    // A policy of density 0 expands the stored CSR at load.
    let zero = dir.path().join("zero.json");
    std::fs::write(
        &zero,
        r#"{"max_density_gemv": 0.0, "max_density_gemm": 0.0}"#,
    )
    .unwrap();
    let o = nap(&[
        "bench",
        p,
        "--runs",
        "3",
        "--policy",
        zero.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let z: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(z["model"]["nodes"][1]["ran"], "expanded");
    let o = nap(&["bench", p, "--vs", d, "--runs", "5"]);
    assert!(
        o.status.success() && text(&o).contains("speedup"),
        "{}",
        text(&o)
    );

    let missing = dir.path().join("nope.nap");
    let o = nap(&["bench", p, "--vs", missing.to_str().unwrap()]);
    fails_with(&o, "nope.nap");
    let o = nap(&["bench", p, "--batch", "0"]);
    fails_with(&o, "--batch");
    let short = dir.path().join("short.f32");
    std::fs::write(&short, [0u8; 40]).unwrap();
    let o = nap(&["bench", p, "--input", short.to_str().unwrap()]);
    fails_with(&o, "bench input");
}

/// `nap bench --calibrate -o` measures and saves a policy that `nap bench --policy` and
/// `nap convert --policy` read back; a policy of density 0 stores every weight dense, a broken
/// policy file is a clear error.
#[test]
fn calibrate_saves_a_policy_that_bench_and_convert_use() {
    let dir = tempfile::tempdir().unwrap();
    let cal = dir.path().join("device.json");
    let o = nap(&[
        "bench",
        "--calibrate",
        "-o",
        cal.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["points"].as_array().unwrap().len(), 30);
    for k in [
        "max_density_gemv",
        "max_density_gemm",
        "max_density_blocked",
    ] {
        let d = r["policy"][k].as_f64().unwrap();
        assert!((0.0..=0.9).contains(&d), "{k} = {d}");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cal).unwrap()).unwrap();
    assert_eq!(saved["policy"], r["policy"]);

    let ckpt = write_checkpoint(dir.path(), "lenet-300-100", |named| {
        for t in named.iter_mut().filter(|t| t.name == "fc1.weight") {
            t.data
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = if i % 10 == 0 { *v } else { 0.0 });
        }
    });
    let zero = dir.path().join("zero.json");
    std::fs::write(
        &zero,
        r#"{"max_density_gemv": 0.0, "max_density_gemm": 0.0}"#,
    )
    .unwrap();
    let half = dir.path().join("half.json");
    std::fs::write(
        &half,
        r#"{"policy": {"max_density_gemv": 0.5, "max_density_gemm": 0.5}}"#,
    )
    .unwrap();
    let mut storages = Vec::new();
    for pol in [&zero, &half] {
        let out = dir.path().join("m.nap");
        convert(
            &ckpt,
            "lenet-300-100",
            &out,
            &["--policy", pol.to_str().unwrap()],
        );
        let o = nap(&["inspect", out.to_str().unwrap(), "--json"]);
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        storages.push(r["layers"][1]["storage"].as_str().unwrap().to_string());
        let o = nap(&[
            "bench",
            out.to_str().unwrap(),
            "--policy",
            cal.to_str().unwrap(),
            "--runs",
            "3",
        ]);
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(storages, ["dense f32", "csr f32"]);

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"max_density_gemv": 2.0, "max_density_gemm": 0.1}"#,
    )
    .unwrap();
    let o = nap(&["bench", "--calibrate", "--policy", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let model = dir.path().join("m.nap");
    let o = nap(&[
        "bench",
        model.to_str().unwrap(),
        "--policy",
        bad.to_str().unwrap(),
    ]);
    fails_with(&o, "bad.json");
}

/// A Linear weight whose non-zeros fill 4×1 blocks (what `nap prune --block 4x1` leaves) is
/// written as blocked CSR, and the model computes the same logits as its dense export.
#[test]
fn issue4_block_pruned_weights_are_written_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = write_checkpoint(dir.path(), "lenet-300-100", |named| {
        for t in named.iter_mut().filter(|t| t.name == "fc1.weight") {
            let cols = t.shape[1] as usize;
            for (k, v) in t.data.iter_mut().enumerate() {
                let (b, j) = (k / cols / 4, k % cols);
                if (b + j) % 7 != 0 {
                    *v = 0.0;
                }
            }
        }
    });
    let (blocked, dense) = (dir.path().join("b.nap"), dir.path().join("d.nap"));
    convert(&ckpt, "lenet-300-100", &blocked, &[]);
    convert(&ckpt, "lenet-300-100", &dense, &["--dense"]);
    let o = nap(&["inspect", blocked.to_str().unwrap(), "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r["layers"][1]["storage"], "bcsr4x1 f32",
        "{}",
        r["layers"][1]
    );
    let input = dir.path().join("x.f32");
    let x: Vec<u8> = (0..784)
        .flat_map(|i| (((i * 37) % 100) as f32 / 100.0).to_le_bytes())
        .collect();
    std::fs::write(&input, x).unwrap();
    let logits = |m: &std::path::Path| {
        let o = nap(&[
            "run",
            m.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--top",
            "10",
            "--json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut v: Vec<(u64, f64)> = r["top"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["class"].as_u64().unwrap(), t["logit"].as_f64().unwrap()))
            .collect();
        v.sort_by_key(|t| t.0);
        v
    };
    let (b, d) = (logits(&blocked), logits(&dense));
    assert_eq!(b.len(), 10);
    for ((cb, lb), (cd, ld)) in b.iter().zip(&d) {
        assert_eq!(cb, cd);
        assert!(
            (lb - ld).abs() <= 1e-4 * (1.0 + ld.abs()),
            "class {cb}: {lb} vs {ld}"
        );
    }
}

/// `nap prune --mode channel` end to end on the digits: a smaller dense model whose FLOPs match
/// the report, --resume from a channel-slimmed checkpoint, `nap convert` of the slimmed
/// safetensors, `--mode channel-fine`, and clear errors.
#[test]
fn issue5_channel_pruning_slims_resumes_and_converts() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = train_digits(dir.path());
    let run = dir.path().join("run");
    let args = |mode: &str, out: &Path, steps: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "prune",
            ckpt.to_str().unwrap(),
            "--arch",
            "digits-cnn",
            "--data",
            "digits",
            "--mode",
            mode,
            "-o",
            out.to_str().unwrap(),
            "--max-drop",
            "40%",
            "--step",
            "0.2",
            "--stats-examples",
            "300",
            "--max-steps",
            steps,
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run_nap = |a: Vec<String>| nap(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run_nap(args("channel", &run, "2", &[]));
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps = r["state"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().any(|s| s["accepted"] == true), "{steps:?}");
    // Physically smaller: fewer parameters and multiply-accumulates, no zeros needed.
    let (dm, pm) = (
        r["dense"]["macs"].as_f64().unwrap(),
        r["pruned"]["macs"].as_f64().unwrap(),
    );
    assert!(pm < dm, "{} vs {}", pm, dm);
    assert!(r["pruned"]["params"].as_u64() < r["dense"]["params"].as_u64());
    let last = steps.iter().rev().find(|s| s["accepted"] == true).unwrap();
    let fr = last["flops_reduction"].as_f64().unwrap();
    assert!((fr - dm / pm).abs() < 1e-9 * fr, "{fr} vs {}", dm / pm);
    assert_eq!(
        r["pruned"]["test_accuracy"], r["pruned"]["runtime_test_accuracy"],
        "{}",
        r["pruned"]
    );
    // The slimmed checkpoint converts and gives the same accuracy as the pruned .nap.
    let slim = dir.path().join("slim.nap");
    let o = nap(&[
        "convert",
        run.join("pruned.safetensors").to_str().unwrap(),
        "--arch",
        "digits-cnn",
        "-o",
        slim.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let params = |p: &Path| {
        let o = nap(&["inspect", p.to_str().unwrap(), "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        r["params"].as_u64().unwrap()
    };
    assert_eq!(params(&slim), params(&run.join("pruned.nap")));
    assert_eq!(Some(params(&slim)), r["pruned"]["params"].as_u64());
    let o = nap(&[
        "eval",
        run.join("pruned.safetensors").to_str().unwrap(),
        "--arch",
        "digits-cnn",
        "--data",
        "digits",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // Resume from the slimmed best checkpoint.
    let o = run_nap(args("channel", &run, "3", &["--resume"]));
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["state"]["steps"].as_array().unwrap().len(), 3);
    // Channels, then single weights, in one command.
    let both = dir.path().join("both");
    let o = run_nap(args("channel-fine", &both, "2", &["--channel-step", "0.3"]));
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Each phase starts from its own step.
    for (phase, step) in [("channel", 0.3), ("fine", 0.2)] {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(both.join(phase).join("state.json")).unwrap())
                .unwrap();
        assert_eq!(st["steps"][0]["fraction"].as_f64(), Some(step), "{phase}");
    }
    assert!(r["pruned"]["nonzero_macs"].as_f64() < r["pruned"]["macs"].as_f64());
    assert!(r["pruned"]["macs"].as_f64() < r["dense"]["macs"].as_f64());
    // Bad input.
    for (mode, bad, needle) in [
        ("fine", vec!["--target-flops", "2"], "--mode channel"),
        ("channel", vec!["--target-flops", "0.5"], "--target-flops"),
        ("channel", vec!["--target-flops", "lots"], "--target-flops"),
        ("channel", vec!["--criterion", "obd"], "magnitude"),
        ("channel", vec!["--flops-weight=-1"], "--flops-weight"),
        ("channel", vec!["--channel-step", "0.3"], "channel-fine"),
        (
            "channel",
            vec!["--target-sparsity", "0.5"],
            "--target-flops",
        ),
    ] {
        let o = run_nap(args(mode, &dir.path().join("bad"), "1", &bad));
        assert!(!o.status.success(), "{bad:?} was accepted");
        assert!(text(&o).contains(needle), "{bad:?}: {}", text(&o));
    }
}

/// An ONNX model goes through convert, inspect, prune, resume, eval and bench with no --arch;
/// checkpoints nap wrote carry their graph; bad ONNX input is a clear error that writes nothing.
#[test]
fn issue13_onnx_model_prunes_resumes_evaluates_and_benches_without_arch() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = train_digits(dir.path());
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    // `nap train` wrote the graph into the checkpoint: no --arch to convert it, to ONNX here.
    let o = nap(&["convert", ckpt.to_str().unwrap(), "-o", &p("model.onnx")]);
    assert!(o.status.success(), "{}", text(&o));
    let o = nap(&["inspect", &p("model.onnx"), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["importable"], true, "{r}");
    assert_eq!(
        r["model"]["input_shape"],
        serde_json::json!([1, 8, 8]),
        "{r}"
    );

    let args = |steps: &str, resume: bool| -> Vec<String> {
        let mut a: Vec<String> = [
            "prune",
            &p("model.onnx"),
            "--data",
            "digits",
            "-o",
            &p("run"),
            "--max-drop",
            "2%",
            "--stats-examples",
            "300",
            "--max-steps",
            steps,
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let run_nap = |a: Vec<String>| nap(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run_nap(args("1", false));
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "pruned.nap",
        "pruned.safetensors",
        "pruned.onnx",
        "state.json",
    ] {
        assert!(dir.path().join("run").join(f).exists(), "{f} missing");
    }
    let o = run_nap(args("2", true));
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["state"]["steps"].as_array().unwrap().len(), 2);
    let acc = r["pruned"]["test_accuracy"].as_f64().unwrap();

    // The pruned checkpoint and the pruned ONNX file load without --arch and agree.
    let eval = |model: &str| -> f64 {
        let o = nap(&["eval", model, "--data", "digits", "--json"]);
        assert!(o.status.success(), "{model}: {}", text(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        r["accuracy"].as_f64().unwrap()
    };
    let st = eval(&p("run/pruned.safetensors"));
    let ox = eval(&p("run/pruned.onnx"));
    assert!(
        (st - acc).abs() < 1e-6 && (ox - acc).abs() < 1e-6,
        "{st} {ox} {acc}"
    );
    let o = nap(&[
        "convert",
        &p("model.onnx"),
        "-o",
        &p("dense.nap"),
        "--dense",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = nap(&[
        "bench",
        &p("run/pruned.nap"),
        "--vs",
        &p("dense.nap"),
        "--runs",
        "3",
        "--warmup",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));

    // Bad input: a clear error, a non-zero exit, nothing written.
    let o = nap(&[
        "convert",
        &p("model.onnx"),
        "--arch",
        "digits-cnn",
        "-o",
        &p("x.nap"),
    ]);
    fails_with(&o, "drop --arch");
    let bytes = std::fs::read(p("model.onnx")).unwrap();
    std::fs::write(p("trunc.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    let o = nap(&["convert", &p("trunc.onnx"), "-o", &p("x.nap")]);
    fails_with(&o, "not a readable ONNX model");
    let o = nap(&["prune", &p("trunc.onnx"), "--data", "digits", "-o", &p("x")]);
    fails_with(&o, "not a readable ONNX model");
    assert!(!dir.path().join("x.nap").exists() && !dir.path().join("x").exists());
    let o = nap(&[
        "convert",
        &p("model.onnx"),
        "--input-shape",
        "1,9,9",
        "-o",
        &p("x.nap"),
    ]);
    fails_with(&o, "disagrees");
    // Weights without a graph still need --arch, and say so.
    let plain = write_checkpoint(dir.path(), "digits-cnn", |_| {});
    let o = nap(&["convert", plain.to_str().unwrap(), "-o", &p("x.nap")]);
    fails_with(&o, "--arch");
}

/// The user's own data: a folder of class subfolders, a flat (unlabelled) folder and tensor
/// files give the same examples as the built-in digits; unlabelled data prunes against the
/// dense model's own predictions.
#[test]
fn issue13_user_data_images_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = train_digits(dir.path());
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let o = nap(&["convert", ckpt.to_str().unwrap(), "-o", &p("model.onnx")]);
    assert!(o.status.success(), "{}", text(&o));
    let (_, test) = nap::data::load_digits().split(0.2, 0);
    // Pixels v/16 (v in 0..=16) as v * 15 / 255, so --std 16/17 gives back v/16.
    for i in 0..test.n {
        let px: Vec<u8> = test
            .image(i)
            .iter()
            .map(|v| (v * 16.0).round() as u8 * 15)
            .collect();
        let img = image::GrayImage::from_raw(8, 8, px).unwrap();
        let class = dir.path().join(format!("labelled/c{}", test.labels[i]));
        std::fs::create_dir_all(&class).unwrap();
        img.save(class.join(format!("{i:04}.png"))).unwrap();
        std::fs::create_dir_all(dir.path().join("flat")).unwrap();
        img.save(dir.path().join(format!("flat/{i:04}.png")))
            .unwrap();
    }
    let inputs = nap::ir::HostTensor {
        name: "inputs".into(),
        shape: vec![test.n as u32, 1, 8, 8],
        data: test.images.clone(),
    };
    let labels = nap::ir::HostTensor {
        name: "labels".into(),
        shape: vec![test.n as u32],
        data: test.labels.iter().map(|&l| l as f32).collect(),
    };
    nap::import::write_safetensors(&dir.path().join("t.safetensors"), &[inputs.clone(), labels])
        .unwrap();
    std::fs::write(
        p("t.npy"),
        nap::import::npy::npy_bytes(&inputs.dims(), &inputs.data),
    )
    .unwrap();

    let model = p("model.onnx");
    let eval = |extra: &[&str]| -> f64 {
        let mut a = vec!["eval", model.as_str(), "--json"];
        a.extend_from_slice(extra);
        let o = nap(&a);
        assert!(o.status.success(), "{extra:?}: {}", text(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        r["accuracy"].as_f64().unwrap()
    };
    let digits = eval(&["--data", "digits"]);
    let st = format!("tensors:{}", p("t.safetensors"));
    assert_eq!(eval(&["--data", &st]), digits);
    let folder = format!("images:{}", p("labelled"));
    // Class folders are numbered in sorted order: c0..c9 are the digits' own labels.
    let from_png = eval(&["--data", &folder, "--std", "0.94117647"]);
    assert!((from_png - digits).abs() < 0.01, "{from_png} vs {digits}");

    // No labels: eval refuses, prune measures agreement with the dense model.
    let flat = format!("images:{}", p("flat"));
    let npy = format!("tensors:{}", p("t.npy"));
    for data in [&flat, &npy] {
        let o = nap(&["eval", &p("model.onnx"), "--data", data]);
        fails_with(&o, "no labels");
    }
    let o = nap(&[
        "prune",
        &p("model.onnx"),
        "--data",
        &flat,
        "--std",
        "0.94117647",
        "-o",
        &p("run"),
        "--max-drop",
        "2%",
        "--stats-examples",
        "200",
        "--max-steps",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("top-1 agreement with the dense model"),
        "{}",
        text(&o)
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r["state"]["dense"]["val"]["accuracy"].as_f64().unwrap(),
        1.0,
        "{}",
        r["state"]["dense"]
    );
    // Fidelity to the dense model needs no labels: against itself perfect, the pruned model
    // in [0, 1] with a non-negative KL divergence.
    for (m, same) in [(p("model.onnx"), true), (p("run/pruned.onnx"), false)] {
        let o = nap(&[
            "eval",
            &m,
            "--data",
            &flat,
            "--std",
            "0.94117647",
            "--vs",
            &p("model.onnx"),
            "--json",
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let (ag, kl) = (
            r["vs"]["top1_agreement"].as_f64().unwrap(),
            r["vs"]["kl"].as_f64().unwrap(),
        );
        assert!(r["accuracy"].is_null(), "{r}");
        if same {
            assert!(ag == 1.0 && kl.abs() < 1e-9, "{r}");
        } else {
            assert!((0.0..=1.0).contains(&ag) && kl >= 0.0, "{r}");
        }
    }

    // Bad data: named, non-zero exit.
    for (data, needle) in [
        ("images:/nonexistent/folder", "/nonexistent/folder"),
        ("pictures:x", "images:DIR"),
        ("tensors:/nonexistent.npy", "/nonexistent.npy"),
    ] {
        let o = nap(&["eval", &p("model.onnx"), "--data", data]);
        assert!(
            !o.status.success() && text(&o).contains(needle),
            "{data}: {}",
            text(&o)
        );
    }
    let wrong = nap::import::npy::npy_bytes(&[3, 1, 9, 9], &[0.0; 243]);
    std::fs::write(p("w.npy"), wrong).unwrap();
    let o = nap(&[
        "prune",
        &p("model.onnx"),
        "--data",
        &format!("tensors:{}", p("w.npy")),
        "-o",
        &p("x"),
    ]);
    fails_with(&o, "[N, 1, 8, 8]");
}

/// A model whose output is a map (PP-OCR's text detector) is refused by `prune` before any
/// work, with the reason, and nothing is written.
#[test]
fn issue13_prune_refuses_a_model_that_is_not_a_classifier() {
    let Some(root) = common::fixtures("issue13_prune_refuses_a_model_that_is_not_a_classifier")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let model = root.join("ppocr/det.onnx");
    let data = format!(
        "tensors:{}",
        root.join("onnx/ppocr-det.input.npy").display()
    );
    let o = nap(&[
        "prune",
        model.to_str().unwrap(),
        "--input-shape",
        "3,96,128",
        "--data",
        &data,
        "-o",
        run.to_str().unwrap(),
    ]);
    fails_with(&o, "need a classifier");
    fails_with(&o, "[1, 96, 128]");
    assert!(!run.exists(), "the run folder was written");
}

/// A `.nap` of one Linear layer (4 inputs, 2 outputs) whose weight holds a NaN and an inf.
fn non_finite_model(path: &Path) {
    use nap_runtime::format::*;
    let mut fb = FileBuilder::new();
    let w = fb.add_f32(&[1.0, f32::NAN, 0.0, 0.5, f32::INFINITY, 0.0, 1.0, 2.0]);
    let value = |name: &str, n| ValueInfo {
        name: name.into(),
        shape: vec![n],
    };
    let header = Header {
        producer: "cli test".into(),
        metadata: Metadata::default(),
        graph: Graph {
            values: vec![value("x", 4), value("y", 2)],
            inputs: vec![0],
            outputs: vec![1],
            nodes: vec![Node {
                name: "fc".into(),
                op: Op::Linear(Linear {
                    weight: 0,
                    bias: None,
                    act: Activation::Relu,
                }),
                inputs: vec![0],
                output: 1,
            }],
        },
        tensors: vec![TensorEntry {
            name: "fc.weight".into(),
            shape: vec![2, 4],
            dtype: DType::F32,
            layout: Layout::Dense { values: w },
        }],
        extensions: vec![],
    };
    std::fs::write(path, fb.finish(&header).unwrap()).unwrap();
}

#[test]
fn issue14_non_finite_weights_are_reported_and_refused_when_strict() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("nan.nap");
    non_finite_model(&m);
    let x = dir.path().join("x.f32");
    std::fs::write(&x, [1f32; 4].map(f32::to_le_bytes).concat()).unwrap();
    let (m, x) = (m.to_str().unwrap(), x.to_str().unwrap());

    let o = nap(&["inspect", m, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["non_finite"],
        serde_json::json!([{"tensor": "fc.weight", "count": 2}])
    );
    let o = nap(&["inspect", m]);
    assert!(text(&o).contains("fc.weight") && text(&o).contains("NaN or infinite"));

    let o = nap(&["run", m, "--input", x]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: tensor fc.weight holds 2 NaN"));
    fails_with(
        &nap(&["run", m, "--input", x, "--strict"]),
        "tensor fc.weight: 2 stored values are NaN or infinite",
    );
    fails_with(
        &nap(&["bench", m, "--strict", "--seconds", "0.1"]),
        "NaN or infinite",
    );
}

#[test]
fn issue14_bench_keeps_to_its_memory_limit_and_threads_auto_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_, m) = converted(dir.path(), "lenet-300-100");
    let m = m.to_str().unwrap();
    fails_with(
        &nap(&["bench", m, "--memory-limit", "0", "--seconds", "0.1"]),
        "exceeds the limit of 0",
    );
    let o = nap(&[
        "bench",
        m,
        "--threads",
        "auto",
        "--seconds",
        "0.1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    fails_with(
        &nap(&["bench", m, "--threads", "0"]),
        "positive number or `auto`",
    );
}

//! Acceptance on the real models (M1, M2) from the registries. Needs NAP_FIXTURES (written by
//! scripts/fetch-fixtures.sh); without it the tests say so and pass, CI always sets it.

use std::path::PathBuf;

use nap::export::{to_nap_bytes, ExportOptions};
use nap::{archs, data, eval, import};
use nap_runtime::Model;

fn fixtures() -> Option<PathBuf> {
    match std::env::var_os("NAP_FIXTURES").filter(|d| !d.is_empty()) {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "NAP_FIXTURES must be set in CI"
            );
            eprintln!("NAP_FIXTURES is not set: real-model acceptance not run (scripts/fetch-fixtures.sh, then set it)");
            None
        }
    }
}

#[test]
fn m1_runtime_equals_reference_on_all_mnist_test_images() {
    let Some(dir) = fixtures() else { return };
    let host = archs::from_checkpoint(
        "mnist-cnn",
        import::read_checkpoint(&dir.join("m1.pth")).unwrap(),
    )
    .unwrap();
    let test = data::mnist::load_mnist(&dir.join("mnist"), data::mnist::Split::Test).unwrap();
    assert_eq!(test.n, 10_000);
    let model = Model::from_vec(&to_nap_bytes(&host, ExportOptions::default()).unwrap()).unwrap();
    let ours = eval::runtime_logits(&model, &test.images, 64, false).unwrap();
    let reference = eval::reference_logits(&host, &test.images, 500, false).unwrap();
    let ag = eval::agreement(&ours, &reference, 10);
    eprintln!("M1: {ag:?}");
    assert!(
        ag.max_rel_err <= 1e-4,
        "max relative error {}",
        ag.max_rel_err
    );
    assert_eq!(ag.top1_mismatches, 0);
    let acc = eval::accuracy(&ours, &test.labels, 10);
    assert_eq!((acc * 10_000.0).round() as u32, 9906, "M1 accuracy {acc}");
}

#[test]
fn m2_top_classes_on_the_reference_photos() {
    let Some(dir) = fixtures() else { return };
    let host = archs::from_checkpoint(
        "mobilenet-v2",
        import::read_checkpoint(&dir.join("m2.pth")).unwrap(),
    )
    .unwrap();
    let model = Model::from_vec(&to_nap_bytes(&host, ExportOptions::default()).unwrap()).unwrap();
    // data-and-models.md: the torchvision weights' top classes on these photos.
    let cases: &[(&str, &[usize])] = &[
        ("coffee.png", &[967]),
        ("camera.png", &[872]),
        ("chelsea.png", &[285, 282, 281]),
        ("motorcycle_left.png", &[665]),
        ("china.jpg", &[698]),
    ];
    for (photo, want) in cases {
        let x = data::image::load_imagenet_input(&dir.join("photos").join(photo)).unwrap();
        let ours = eval::runtime_logits(&model, &x, 1, false).unwrap();
        let reference = eval::reference_logits(&host, &x, 1, false).unwrap();
        let ag = eval::agreement(&ours, &reference, 1000);
        assert!(
            ag.max_rel_err <= 1e-4,
            "{photo}: max relative error {}",
            ag.max_rel_err
        );
        let top = nap::util::top_k(&ours, want.len());
        let got: Vec<usize> = top.iter().map(|t| t.0).collect();
        eprintln!(
            "M2 {photo}: top {got:?}, max relative error {:.2e}",
            ag.max_rel_err
        );
        assert_eq!(&got[..], *want, "{photo}");
    }
}

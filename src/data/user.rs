//! The user's own data: a folder of images (`images:DIR`) or a tensor file (`tensors:FILE`).
//!
//! - `images:DIR`: one subfolder per class gives the labels (classes in sorted folder-name
//!   order); a flat folder of images is unlabelled. PNG and JPEG files are read; each is
//!   resized (shorter side to `resize`, antialiased), centre-cropped to the model's input and
//!   normalised by `mean`/`std` per channel, in RGB or BGR order (grayscale for 1-channel
//!   models). `views > 1` adds crops and mirror images of each file (a small unlabelled set
//!   goes further for statistics and distillation).
//! - `tensors:FILE`: a `.npy` array of inputs `[N, ...]` (unlabelled), or a `.safetensors`
//!   file with `inputs` `[N, ...]` and optional `labels` `[N]` (integer class indices, stored
//!   as any float or integer type).
//!
//! Unlabelled data gets the dense model's top-1 class as its label ([`pseudo_label`]), so
//! "accuracy" becomes top-1 agreement with the dense model; fine-tuning distils from it.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use image::DynamicImage;

use super::image::{open_image, view_input, ViewSpec};
use super::{Dataset, Label};

/// How images become inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePreprocess {
    /// Shorter side after resizing (default: the input's shorter side, i.e. no crop margin).
    pub resize: Option<u32>,
    /// Per-channel mean and standard deviation of `x/255` (one value: every channel).
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Channels in BGR order (OpenCV-trained models) instead of RGB.
    pub bgr: bool,
    /// Views per image: 1 is the centre crop; more add mirror images and corner crops, then
    /// the same at a 15 % larger resize, and so on.
    pub views: usize,
}

impl Default for ImagePreprocess {
    fn default() -> Self {
        ImagePreprocess {
            resize: None,
            mean: vec![0.0],
            std: vec![1.0],
            bgr: false,
            views: 1,
        }
    }
}

/// One view of an image: resize factor over the base resize, crop position in `[0, 1]` of the
/// room left (0.5: centred), mirrored or not.
#[derive(Clone, Copy, Debug, PartialEq)]
struct View {
    scale: f64,
    x: f64,
    y: f64,
    flip: bool,
}

fn views(k: usize) -> Vec<View> {
    let spots = [
        (0.5, 0.5, false),
        (0.5, 0.5, true),
        (0.0, 0.0, false),
        (1.0, 0.0, false),
        (0.0, 1.0, false),
        (1.0, 1.0, false),
        (0.0, 0.0, true),
        (1.0, 0.0, true),
        (0.0, 1.0, true),
        (1.0, 1.0, true),
    ];
    (0..k)
        .map(|i| {
            let (x, y, flip) = spots[i % spots.len()];
            View {
                scale: 1.0 + 0.15 * (i / spots.len()) as f64,
                x,
                y,
                flip,
            }
        })
        .collect()
}

/// `img` as a `[C, H, W]` input (`shape`), by `pre` and `view`.
fn image_input(
    img: &DynamicImage,
    shape: [usize; 3],
    pre: &ImagePreprocess,
    v: View,
) -> Result<Vec<f32>> {
    let base = pre.resize.unwrap_or(shape[1].min(shape[2]) as u32);
    let spec = ViewSpec {
        resize: ((base as f64) * v.scale).round() as u32,
        x: v.x,
        y: v.y,
        flip: v.flip,
        mean: &pre.mean,
        std: &pre.std,
        bgr: pre.bgr,
    };
    view_input(img, shape, &spec)
}

/// The images of a folder.
pub struct ImageFolder {
    pub files: Vec<PathBuf>,
    /// One per file; `None` for a flat folder.
    pub labels: Option<Vec<Label>>,
    /// The class subfolders' names, in label order.
    pub classes: Vec<String>,
}

/// Lists a folder's images: one subfolder per class (labels in sorted folder-name order), or
/// a flat folder (unlabelled).
pub fn scan_images(dir: &Path) -> Result<ImageFolder> {
    let is_image = |p: &Path| {
        p.is_file()
            && p.extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.as_str()))
    };
    let entries = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .with_context(|| format!("reading folder {}", d.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("reading folder {}", d.display()))?;
        v.sort();
        Ok(v)
    };
    let all = entries(dir)?;
    let subdirs: Vec<&PathBuf> = all.iter().filter(|p| p.is_dir()).collect();
    let flat: Vec<PathBuf> = all.iter().filter(|p| is_image(p)).cloned().collect();
    if !subdirs.is_empty() && !flat.is_empty() {
        bail!(
            "{} holds both images and subfolders: use one subfolder per class (labelled) or only images (unlabelled)",
            dir.display()
        );
    }
    if subdirs.is_empty() {
        if flat.is_empty() {
            bail!("{} holds no .png/.jpg images", dir.display());
        }
        return Ok(ImageFolder {
            files: flat,
            labels: None,
            classes: Vec::new(),
        });
    }
    let mut files = Vec::new();
    let mut labels = Vec::new();
    let mut classes = Vec::new();
    for (k, sub) in subdirs.iter().enumerate() {
        let imgs: Vec<PathBuf> = entries(sub)?.into_iter().filter(|p| is_image(p)).collect();
        if imgs.is_empty() {
            bail!("class folder {} holds no .png/.jpg images", sub.display());
        }
        labels.extend(std::iter::repeat_n(k as Label, imgs.len()));
        files.extend(imgs);
        classes.push(
            sub.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    Ok(ImageFolder {
        files,
        labels: Some(labels),
        classes,
    })
}

/// The images of `dir` as inputs of per-example shape `shape` (`[C, H, W]`, or a vector model's
/// `[n]` is refused), and whether they are labelled (else the labels are zeros, to be replaced
/// by [`pseudo_label`]).
pub fn load_images(dir: &Path, shape: &[u32], pre: &ImagePreprocess) -> Result<(Dataset, bool)> {
    let shape: [usize; 3] = match *shape {
        [c, h, w] => [c as usize, h as usize, w as usize],
        _ => bail!("images:DIR needs a model whose input is an image [C, H, W], not {shape:?}"),
    };
    ensure!(pre.views >= 1, "--views must be at least 1");
    let ImageFolder { files, labels, .. } = scan_images(dir)?;
    let vs = views(pre.views);
    let n = files.len() * vs.len();
    let per: usize = shape.iter().product();
    let mut images = Vec::with_capacity(n * per);
    let mut all_labels = Vec::with_capacity(n);
    for (i, f) in files.iter().enumerate() {
        let img = open_image(f)?;
        for &v in &vs {
            images.extend(
                image_input(&img, shape, pre, v)
                    .with_context(|| format!("preprocessing {}", f.display()))?,
            );
            all_labels.push(labels.as_ref().map_or(0, |l| l[i]));
        }
    }
    Ok((
        Dataset {
            images,
            labels: all_labels,
            n,
            shape,
        },
        labels.is_some(),
    ))
}

/// The examples of a tensor file (see the module doc) for a model of input shape `shape`, and
/// whether they are labelled.
pub fn load_tensors(file: &Path, shape: &[u32]) -> Result<(Dataset, bool)> {
    let ext = file
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let (inputs, labels) = match ext.as_str() {
        "npy" => (crate::import::npy::read_npy(file)?, None),
        "safetensors" => {
            let mut ts = crate::import::read_safetensors(file)?;
            let take = |ts: &mut Vec<crate::ir::HostTensor>, names: &[&str]| {
                ts.iter()
                    .position(|t| names.contains(&t.name.as_str()))
                    .map(|i| ts.remove(i))
            };
            let x = take(&mut ts, &["inputs", "input", "x"]).with_context(|| {
                format!(
                    "{} has no tensor named inputs (or input, x)",
                    file.display()
                )
            })?;
            (x, take(&mut ts, &["labels", "label", "y"]))
        }
        _ => bail!(
            "{}: tensors:FILE takes a .npy or .safetensors file",
            file.display()
        ),
    };
    let want: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    ensure!(
        inputs.shape.len() == want.len() + 1 && inputs.dims()[1..] == want[..],
        "{}: inputs of shape {:?}, the model takes [N, {}]",
        file.display(),
        inputs.shape,
        want.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let n = inputs.shape[0] as usize;
    ensure!(n > 0, "{}: no examples", file.display());
    if let Some(i) = inputs.data.iter().position(|v| !v.is_finite()) {
        bail!("{}: input value {i} is not finite", file.display());
    }
    let labelled = labels.is_some();
    let labels: Vec<Label> = match labels {
        Some(l) => {
            ensure!(
                l.data.len() == n,
                "{}: {} labels for {n} examples",
                file.display(),
                l.data.len()
            );
            l.data
                .iter()
                .map(|&v| {
                    if v >= 0.0 && v.fract() == 0.0 && v < u32::MAX as f32 {
                        Ok(v as Label)
                    } else {
                        bail!("{}: label {v} is not a class index", file.display())
                    }
                })
                .collect::<Result<_>>()?
        }
        None => vec![0; n],
    };
    let shape = match want[..] {
        [c, h, w] => [c, h, w],
        _ => [want.iter().product(), 1, 1],
    };
    Ok((
        Dataset {
            images: inputs.data,
            labels,
            n,
            shape,
        },
        labelled,
    ))
}

/// Labels every example with the top-1 class of `logits` (`n × classes`, the dense model's).
pub fn pseudo_label(d: &mut Dataset, logits: &[f32], classes: usize) {
    d.labels = logits
        .chunks(classes)
        .map(|row| crate::util::argmax(row) as Label)
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_start_centred_and_cycle() {
        let v = views(12);
        assert_eq!(
            v[0],
            View {
                scale: 1.0,
                x: 0.5,
                y: 0.5,
                flip: false
            }
        );
        assert!(v[1].flip);
        assert_eq!(v[10].scale, 1.15);
        assert_eq!((v[10].x, v[10].y, v[10].flip), (0.5, 0.5, false));
    }

    #[test]
    fn image_input_crops_normalises_and_orders_channels() {
        // 4x2 image: left half red, right half blue.
        let mut img = image::RgbImage::new(4, 2);
        for (x, _, p) in img.enumerate_pixels_mut() {
            *p = if x < 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            };
        }
        let img = DynamicImage::ImageRgb8(img);
        let pre = ImagePreprocess {
            mean: vec![0.5],
            std: vec![0.5],
            ..Default::default()
        };
        let centre = View {
            scale: 1.0,
            x: 0.5,
            y: 0.5,
            flip: false,
        };
        // Shorter side stays 2: a centred 2x2 crop holds columns 1..3.
        let x = image_input(&img, [3, 2, 2], &pre, centre).unwrap();
        assert_eq!(&x[0..2], &[1.0, -1.0]); // red plane, row 0
        assert_eq!(&x[8..10], &[-1.0, 1.0]); // blue plane, row 0
        let bgr = ImagePreprocess {
            bgr: true,
            ..pre.clone()
        };
        let y = image_input(&img, [3, 2, 2], &bgr, centre).unwrap();
        assert_eq!(&y[0..2], &x[8..10]);
        let left = View {
            x: 0.0,
            flip: true,
            ..centre
        };
        let z = image_input(&img, [3, 2, 2], &pre, left).unwrap();
        assert_eq!(&z[0..2], &[1.0, 1.0]);
        let gray = image_input(&img, [1, 2, 2], &ImagePreprocess::default(), centre).unwrap();
        assert!((gray[0] - 0.299).abs() < 1e-6 && (gray[1] - 0.114).abs() < 1e-6);
        // A resize below the input's size leaves nothing to crop.
        let small = ImagePreprocess {
            resize: Some(2),
            ..pre
        };
        assert!(image_input(&img, [3, 3, 3], &small, centre).is_err());
    }
}

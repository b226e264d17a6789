//! Loading PNG/JPEG images as model inputs, with the preprocessing the imported models were
//! trained with.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, RgbImage};

/// ImageNet channel means and standard deviations (torchvision's `Normalize`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Shorter side after the resize, and the side of the centre crop.
pub const IMAGENET_RESIZE: u32 = 256;
pub const IMAGENET_CROP: u32 = 224;

/// Decodes an image file (format from its content, not its name).
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    image::ImageReader::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("reading {}", path.display()))?
        .decode()
        .with_context(|| format!("decoding image {}", path.display()))
}

/// Loads an image as a MobileNetV2/ImageNet input, like torchvision's
/// `Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)` on a PIL RGB image:
/// grayscale is replicated to RGB (alpha dropped), the shorter side is resized to 256 with an
/// antialiased bilinear (triangle) filter, the centre 224×224 is cropped, values are scaled to
/// `[0, 1]` and normalised. Returns `3 * 224 * 224` values in CHW order.
pub fn load_imagenet_input(path: &Path) -> Result<Vec<f32>> {
    let img = open_image(path)?;
    imagenet_input(&img).with_context(|| format!("preprocessing {}", path.display()))
}

/// [`load_imagenet_input`] on an image already decoded.
pub fn imagenet_input(img: &DynamicImage) -> Result<Vec<f32>> {
    imagenet_view(img, &ImagenetView::CENTER)
}

/// One view of an image for an ImageNet model: the shorter side resized to `resize`, a
/// 224×224 crop at relative position (`x`, `y`) in `[0, 1]` of the room left (0.5: centred),
/// mirrored left to right if `flip`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImagenetView {
    pub resize: u32,
    pub x: f64,
    pub y: f64,
    pub flip: bool,
}

impl ImagenetView {
    /// torchvision's evaluation transform: `Resize(256), CenterCrop(224)`.
    pub const CENTER: ImagenetView = ImagenetView {
        resize: IMAGENET_RESIZE,
        x: 0.5,
        y: 0.5,
        flip: false,
    };
}

/// The view `v` of `img`, normalised like [`load_imagenet_input`]: `3 * 224 * 224` values, CHW.
pub fn imagenet_view(img: &DynamicImage, v: &ImagenetView) -> Result<Vec<f32>> {
    let c = IMAGENET_CROP as usize;
    view_input(
        img,
        [3, c, c],
        &ViewSpec {
            resize: v.resize,
            x: v.x,
            y: v.y,
            flip: v.flip,
            mean: &IMAGENET_MEAN,
            std: &IMAGENET_STD,
            bgr: false,
        },
    )
}

/// How one view of an image becomes an input: the shorter side resized to `resize` (an
/// antialiased bilinear filter), a crop at relative position (`x`, `y`) in `[0, 1]` of the room
/// left (0.5: centred, rounded as torchvision's centre crop), mirrored left to right if `flip`,
/// then `(x/255 − mean[c]) / std[c]` (one value: every channel), channels RGB or BGR.
#[derive(Clone, Copy, Debug)]
pub struct ViewSpec<'a> {
    pub resize: u32,
    pub x: f64,
    pub y: f64,
    pub flip: bool,
    pub mean: &'a [f32],
    pub std: &'a [f32],
    pub bgr: bool,
}

/// The view `v` of `img` as a `[C, H, W]` input (`shape`; `C` is 3, or 1 for grayscale with
/// PIL's "L" weights).
pub fn view_input(img: &DynamicImage, shape: [usize; 3], v: &ViewSpec) -> Result<Vec<f32>> {
    let [c, h, w] = shape;
    ensure!(
        c == 1 || c == 3,
        "images give 1 or 3 channels, the model takes {c}"
    );
    for (what, vals) in [("mean", v.mean), ("std", v.std)] {
        ensure!(
            vals.len() == 1 || vals.len() == c,
            "--{what} has {} values for {c} channels",
            vals.len()
        );
    }
    ensure!(
        v.std.iter().all(|s| *s != 0.0 && s.is_finite()),
        "--std must be non-zero"
    );
    ensure!(
        (0.0..=1.0).contains(&v.x) && (0.0..=1.0).contains(&v.y),
        "crop position outside [0, 1]"
    );
    let rgb: RgbImage = img.to_rgb8();
    let (iw, ih) = rgb.dimensions();
    ensure!(iw > 0 && ih > 0, "empty image");
    let (nw, nh) = resized_short_side(iw, ih, v.resize);
    ensure!(
        nw as usize >= w && nh as usize >= h,
        "image of {iw}x{ih} is too small to crop {w}x{h} after resizing to {nw}x{nh}"
    );
    let resized = if (nw, nh) == (iw, ih) {
        rgb
    } else {
        image::imageops::resize(&rgb, nw, nh, FilterType::Triangle)
    };
    let top = round_half_even((nh as usize - h) as f64 * v.y) as u32;
    let left = round_half_even((nw as usize - w) as f64 * v.x) as u32;
    let at = |vals: &[f32], ch: usize| vals[if vals.len() == 1 { 0 } else { ch }];
    let plane = h * w;
    let mut out = vec![0f32; c * plane];
    for y in 0..h {
        for x in 0..w {
            let sx = if v.flip { w - 1 - x } else { x };
            let p = resized.get_pixel(left + sx as u32, top + y as u32).0;
            let px = [p[0] as f32, p[1] as f32, p[2] as f32];
            for ch in 0..c {
                let raw = if c == 1 {
                    0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2]
                } else if v.bgr {
                    px[2 - ch]
                } else {
                    px[ch]
                };
                out[ch * plane + y * w + x] = (raw / 255.0 - at(v.mean, ch)) / at(v.std, ch);
            }
        }
    }
    Ok(out)
}

/// torchvision's `Resize(size)` with an int: the shorter side becomes `size`, the longer
/// `int(size * long / short)`.
pub fn resized_short_side(w: u32, h: u32, size: u32) -> (u32, u32) {
    if w <= h {
        let nh = (size as f64 * h as f64 / w as f64) as u32;
        (size, nh.max(1))
    } else {
        let nw = (size as f64 * w as f64 / h as f64) as u32;
        (nw.max(1), size)
    }
}

/// Python's `round` (half to even), as torchvision's centre crop uses.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// Normalisation of a grayscale input: `v = (x/255 − mean)/std`, with `x` first inverted
/// (`255 − x`) if `invert` (for dark-on-light drawings fed to MNIST models, which expect
/// light-on-dark).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrayPreprocess {
    pub mean: f32,
    pub std: f32,
    pub invert: bool,
}

impl GrayPreprocess {
    /// MNIST models (M1): `(x/255 − 0.1307)/0.3081`.
    pub const MNIST: GrayPreprocess = GrayPreprocess {
        mean: super::mnist::MNIST_MEAN,
        std: super::mnist::MNIST_STD,
        invert: false,
    };
    /// Plain `x/255`.
    pub const UNIT: GrayPreprocess = GrayPreprocess {
        mean: 0.0,
        std: 1.0,
        invert: false,
    };
    /// The same with `invert` set.
    pub fn inverted(self) -> Self {
        GrayPreprocess {
            invert: true,
            ..self
        }
    }
}

/// Loads an image as a single-channel `h × w` input (shape `[1, h, w]`): converted to
/// grayscale with PIL's weights (0.299, 0.587, 0.114), resized to exactly `h × w` (aspect
/// ratio not kept) with an antialiased bilinear filter, then normalised by `preprocess`.
pub fn load_gray_input(
    path: &Path,
    h: usize,
    w: usize,
    preprocess: GrayPreprocess,
) -> Result<Vec<f32>> {
    let img = open_image(path)?;
    gray_input(&img, h, w, preprocess).with_context(|| format!("preprocessing {}", path.display()))
}

/// [`load_gray_input`] on an image already decoded.
pub fn gray_input(
    img: &DynamicImage,
    h: usize,
    w: usize,
    preprocess: GrayPreprocess,
) -> Result<Vec<f32>> {
    ensure!(
        h > 0 && w > 0 && h <= 1 << 14 && w <= 1 << 14,
        "bad target size {h}x{w}"
    );
    ensure!(
        preprocess.std != 0.0 && preprocess.std.is_finite(),
        "std must be finite and non-zero"
    );
    let rgb = img.to_rgb8();
    let (iw, ih) = rgb.dimensions();
    ensure!(iw > 0 && ih > 0, "empty image");
    let gray = GrayImage::from_fn(iw, ih, |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0;
        // PIL's "L" conversion: ITU-R 601-2 luma in 16-bit fixed point.
        let l = (r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16;
        image::Luma([l as u8])
    });
    let (h32, w32) = (h as u32, w as u32);
    let resized = if (iw, ih) == (w32, h32) {
        gray
    } else {
        image::imageops::resize(&gray, w32, h32, FilterType::Triangle)
    };
    Ok(resized
        .pixels()
        .map(|p| {
            let x = if preprocess.invert {
                255 - p.0[0]
            } else {
                p.0[0]
            };
            (x as f32 / 255.0 - preprocess.mean) / preprocess.std
        })
        .collect())
}

/// Reads a class-name file: one name per line (e.g. `imagenet_classes.txt`).
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::to_owned).collect())
}

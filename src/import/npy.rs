//! NumPy `.npy` files (format versions 1–3): little-endian `f4`/`f8` arrays in C order are read
//! as f32, and f32 arrays are written (version 1).

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::ir::{shape_u32, HostTensor};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads an `.npy` array as f32 (`<f4`, or `<f8` converted), named after the file.
pub fn read_npy(path: &Path) -> Result<HostTensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    parse_npy(&bytes, name)
        .with_context(|| format!("{}: not a supported .npy array", path.display()))
}

/// [`read_npy`] from bytes.
pub fn parse_npy(bytes: &[u8], name: String) -> Result<HostTensor> {
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        bail!("no .npy magic");
    }
    let (hlen, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = bytes
        .get(start..start.checked_add(hlen).context("header length overflows")?)
        .context("truncated header")?;
    let header = std::str::from_utf8(header).context("header is not text")?;
    let descr = dict_value(header, "descr").context("header has no descr")?;
    let fortran = dict_value(header, "fortran_order").context("header has no fortran_order")?;
    let shape_text = dict_value(header, "shape").context("header has no shape")?;
    if fortran.starts_with("True") {
        bail!("Fortran-ordered arrays are not supported");
    }
    let shape = parse_shape(shape_text)?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("shape overflows")?;
    let body = &bytes[start + hlen..];
    let quoted = descr.trim_start_matches(['\'', '"']);
    let width = if quoted.starts_with("<f4") {
        4
    } else if quoted.starts_with("<f8") {
        8
    } else {
        bail!("element type {descr} (only little-endian float32 and float64)");
    };
    let need = numel.checked_mul(width).context("shape overflows")?;
    if body.len() != need {
        bail!(
            "holds {} data bytes, shape {shape:?} needs {need}",
            body.len()
        );
    }
    let data: Vec<f32> = body
        .chunks_exact(width)
        .map(|c| match *c {
            [a, b, c, d] => f32::from_le_bytes([a, b, c, d]),
            _ => f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32,
        })
        .collect();
    let shape = shape_u32(&shape, &name)?;
    Ok(HostTensor { name, shape, data })
}

/// Encodes an f32 array as `.npy` (version 1, `<f4`, C order).
pub fn npy_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // The header, with its 10-byte preamble, pads to a multiple of 64 and ends in a newline.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + 4 * data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The text after `'key':` in a Python dict literal, up to the end of the literal.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let k = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[k + key.len() + 2..];
    Some(rest[rest.find(':')? + 1..].trim_start())
}

fn parse_shape(text: &str) -> Result<Vec<usize>> {
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.split(')').next())
        .context("shape is not a tuple")?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim_end_matches('L')
                .parse::<usize>()
                .context("bad dimension")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for shape in [vec![], vec![3], vec![2, 3, 4]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
            let t = parse_npy(&npy_bytes(&shape, &data), "x".into()).unwrap();
            assert_eq!((t.dims(), t.data), (shape, data));
        }
    }

    #[test]
    fn rejects_truncated_and_foreign() {
        let b = npy_bytes(&[4], &[1.0, 2.0, 3.0, 4.0]);
        assert!(parse_npy(&b[..b.len() - 1], "x".into()).is_err());
        assert!(parse_npy(&b[..20], "x".into()).is_err());
        let mut i8 = b.clone();
        let at = b.windows(3).position(|w| w == b"<f4").unwrap();
        i8[at..at + 3].copy_from_slice(b"|i1");
        assert!(parse_npy(&i8, "x".into()).is_err());
        assert!(parse_npy(b"PK\x03\x04", "x".into()).is_err());
    }
}

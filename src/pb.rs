//! Protocol Buffers wire format: the little the ONNX writer and the ONNX input-shape patch
//! need (varints, length-delimited fields, fixed32), without generated code.

/// A protobuf message being encoded.
#[derive(Default)]
pub struct Pb(pub Vec<u8>);

impl Pb {
    pub fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    pub fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }

    pub fn int(&mut self, field: u32, v: i64) {
        self.key(field, 0);
        self.varint(v as u64);
    }

    pub fn float(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    pub fn str(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    pub fn msg(&mut self, field: u32, f: impl FnOnce(&mut Pb)) {
        let mut m = Pb::default();
        f(&mut m);
        self.bytes(field, &m.0);
    }
}

/// One field of a message: its number, wire type, and bytes (the whole field, and for
/// length-delimited fields the payload).
pub struct Field<'a> {
    pub num: u32,
    pub wire: u8,
    pub raw: &'a [u8],
    pub payload: &'a [u8],
    /// The value of a varint field.
    pub value: u64,
}

fn read_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The fields of a message, in order; `None` if it is not well-formed.
pub fn fields(buf: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let start = at;
        let key = read_varint(buf, &mut at)?;
        let (num, wire) = ((key >> 3) as u32, (key & 7) as u8);
        let (mut payload, mut value): (&[u8], u64) = (&[], 0);
        match wire {
            0 => value = read_varint(buf, &mut at)?,
            1 => at = at.checked_add(8).filter(|&e| e <= buf.len())?,
            2 => {
                let len = usize::try_from(read_varint(buf, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|&e| e <= buf.len())?;
                payload = &buf[at..end];
                at = end;
            }
            5 => at = at.checked_add(4).filter(|&e| e <= buf.len())?,
            _ => return None,
        }
        out.push(Field {
            num,
            wire,
            raw: &buf[start..at],
            payload,
            value,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode() {
        let mut m = Pb::default();
        m.int(1, 300);
        m.str(2, "abc");
        m.float(3, 1.5);
        m.msg(4, |n| n.int(1, -1));
        let f = fields(&m.0).unwrap();
        assert_eq!(f.len(), 4);
        assert_eq!((f[0].num, f[0].wire, f[0].value), (1, 0, 300));
        assert_eq!((f[1].num, f[1].payload), (2, &b"abc"[..]));
        assert_eq!((f[2].num, f[2].wire), (3, 5));
        let inner = fields(f[3].payload).unwrap();
        assert_eq!(inner[0].value as i64, -1);
        let cat: Vec<u8> = f.iter().flat_map(|x| x.raw.iter().copied()).collect();
        assert_eq!(cat, m.0);
        assert!(fields(&m.0[..m.0.len() - 1]).is_none());
    }
}

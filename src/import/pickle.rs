//! A small, non-executing pickle virtual machine.
//!
//! It understands the opcodes that `torch.save` (and Python's `pickle` at protocols 2 to 5)
//! emit for state dicts and turns a pickle into a tree of [`Value`]s. Nothing is ever executed:
//! `GLOBAL`/`STACK_GLOBAL` produce a symbolic [`Value::Global`], `REDUCE`/`NEWOBJ` produce a
//! symbolic [`Value::Object`] (except `collections.OrderedDict`/`dict`, which become
//! [`Value::Dict`] so that `SETITEMS` can fill them), and persistent ids become
//! [`Value::PersId`] for the caller to resolve.
//!
//! The input is treated as untrusted: every length is checked against the remaining input
//! before anything is allocated, nesting depth is bounded (so that dropping or walking a
//! value can never overflow the stack), and the total size of values copied out of the memo is
//! bounded (so that a "billion laughs" pickle cannot exhaust memory).

use std::collections::HashMap;
use std::fmt;

/// Largest nesting depth of a value built by the VM.
pub const MAX_DEPTH: usize = 256;
/// Largest number of nodes in a parsed value (shared memo entries count once per use); the
/// bound is also at most four times the input length plus a million.
pub const MAX_NODES: usize = 1 << 24;

/// A decoded pickle value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    /// An integer that fits in `i64`.
    Int(i64),
    /// An integer that does not fit in `i64`: little-endian two's-complement bytes as pickled.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// A dict (or `collections.OrderedDict`), in insertion order. A repeated key replaces the
    /// earlier value in place, as in Python.
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    /// A global reference (`module.name`), never resolved to anything executable.
    Global {
        module: String,
        name: String,
    },
    /// The symbolic result of calling `callable(*args)` (`REDUCE`, `NEWOBJ`, `INST`, `OBJ`),
    /// with the state given by a later `BUILD`, if any.
    Object {
        callable: Box<Value>,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
    /// A persistent id (`PERSID`/`BINPERSID`), left for the caller to resolve.
    PersId(Box<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    /// The items of a tuple or a list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(v) => Some(v),
            _ => None,
        }
    }
    /// Looks up a string key in a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
    /// `true` for a global `module.name`.
    pub fn is_global(&self, module: &str, name: &str) -> bool {
        matches!(self, Value::Global { module: m, name: n } if m == module && n == name)
    }
    /// A short human description of the kind of value, for error messages.
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::BigInt(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::List(_) => "list".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::Dict(_) => "dict".into(),
            Value::Set(_) => "set".into(),
            Value::Global { module, name } => format!("global {module}.{name}"),
            Value::Object { callable, .. } => match callable.as_ref() {
                Value::Global { module, name } => format!("object {module}.{name}(...)"),
                _ => "object".into(),
            },
            Value::PersId(_) => "persistent id".into(),
        }
    }
}

/// Why a pickle could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickleError {
    #[error("pickle truncated at byte {pos}: needed {needed} more byte(s) for {what}")]
    Truncated {
        pos: usize,
        needed: usize,
        what: &'static str,
    },
    #[error("unsupported pickle opcode 0x{op:02x} ({name}) at byte {pos}")]
    UnsupportedOpcode {
        op: u8,
        name: &'static str,
        pos: usize,
    },
    #[error("unknown pickle opcode 0x{op:02x} at byte {pos}")]
    UnknownOpcode { op: u8, pos: usize },
    #[error("pickle stack underflow at byte {pos} (opcode {op})")]
    StackUnderflow { op: &'static str, pos: usize },
    #[error("pickle opcode {op} at byte {pos} found no MARK")]
    NoMark { op: &'static str, pos: usize },
    #[error("pickle opcode {op} at byte {pos} met a MARK where a value was expected")]
    UnexpectedMark { op: &'static str, pos: usize },
    #[error("pickle memo key {key} is not defined (byte {pos})")]
    MissingMemo { key: u64, pos: usize },
    #[error("pickle opcode {op} at byte {pos}: {msg}")]
    Invalid {
        op: &'static str,
        pos: usize,
        msg: String,
    },
    #[error("pickle nesting deeper than {MAX_DEPTH} at byte {pos}")]
    TooDeep { pos: usize },
    #[error(
        "pickle value too large (over {MAX_NODES} nodes, or four per input byte) at byte {pos}"
    )]
    TooLarge { pos: usize },
    #[error("pickle protocol {0} is not supported (2 to 5 are)")]
    Protocol(u8),
    #[error("pickle ended without STOP")]
    NoStop,
}

type Res<T> = std::result::Result<T, PickleError>;

/// The result of [`parse`]: the value and how many bytes of input the pickle used.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub value: Value,
    pub consumed: usize,
}

/// Parses one pickle from the start of `data` (trailing bytes are left alone and reported
/// through [`Parsed::consumed`]).
pub fn parse(data: &[u8]) -> Result<Parsed, PickleError> {
    let mut vm = Vm::new(data);
    let root = vm.run()?;
    let mut budget = MAX_NODES.min(data.len().saturating_mul(4).saturating_add(1 << 20));
    let value = vm.materialise(root, 0, &mut budget)?;
    Ok(Parsed {
        value,
        consumed: vm.pos,
    })
}

/// Parses one pickle and returns just its value.
pub fn loads(data: &[u8]) -> Result<Value, PickleError> {
    parse(data).map(|p| p.value)
}

fn opname(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "?",
    }
}

type Id = usize;

/// A value under construction. Containers refer to other nodes by id so that the memo holds
/// references with Python's sharing semantics (a list memoised while empty and filled later
/// is seen filled through the memo).
enum Node {
    Leaf(Value),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    Object {
        callable: Id,
        args: Vec<Id>,
        state: Option<Id>,
    },
    PersId(Id),
}

enum Item {
    Mark,
    Ref(Id),
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    /// Start of the opcode being executed, for error messages.
    op_pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Item>,
    memo: HashMap<u64, Id>,
}

#[derive(PartialEq, Eq, Hash)]
enum KeyRepr {
    Str(String),
    Int(i64),
}

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        Vm {
            data,
            pos: 0,
            op_pos: 0,
            nodes: Vec::new(),
            stack: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Res<&'a [u8]> {
        let avail = self.data.len() - self.pos;
        if n > avail {
            return Err(PickleError::Truncated {
                pos: self.pos,
                needed: n - avail,
                what,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Res<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Res<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Res<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Res<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// Reads up to (and consumes) the next newline, returning the line without it.
    fn line(&mut self, what: &'static str) -> Res<&'a [u8]> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(PickleError::Truncated {
                pos: self.pos,
                needed: 1,
                what,
            }),
        }
    }
    fn invalid(&self, op: u8, msg: impl Into<String>) -> PickleError {
        PickleError::Invalid {
            op: opname(op),
            pos: self.op_pos,
            msg: msg.into(),
        }
    }
    fn utf8(&self, op: u8, b: &[u8]) -> Res<String> {
        String::from_utf8(b.to_vec()).map_err(|_| self.invalid(op, "string is not valid UTF-8"))
    }
    fn len_of(&self, op: u8, n: u64) -> Res<usize> {
        usize::try_from(n).map_err(|_| self.invalid(op, format!("length {n} too large")))
    }

    fn alloc(&mut self, n: Node) -> Id {
        self.nodes.push(n);
        self.nodes.len() - 1
    }
    fn push(&mut self, n: Node) {
        let id = self.alloc(n);
        self.stack.push(Item::Ref(id));
    }
    fn push_leaf(&mut self, v: Value) {
        self.push(Node::Leaf(v))
    }
    fn pop(&mut self, op: u8) -> Res<Id> {
        match self.stack.pop() {
            Some(Item::Ref(id)) => Ok(id),
            Some(Item::Mark) => Err(PickleError::UnexpectedMark {
                op: opname(op),
                pos: self.op_pos,
            }),
            None => Err(PickleError::StackUnderflow {
                op: opname(op),
                pos: self.op_pos,
            }),
        }
    }
    fn top(&self, op: u8) -> Res<Id> {
        match self.stack.last() {
            Some(Item::Ref(id)) => Ok(*id),
            Some(Item::Mark) => Err(PickleError::UnexpectedMark {
                op: opname(op),
                pos: self.op_pos,
            }),
            None => Err(PickleError::StackUnderflow {
                op: opname(op),
                pos: self.op_pos,
            }),
        }
    }
    /// Pops everything down to the topmost MARK (which is removed too).
    fn pop_mark(&mut self, op: u8) -> Res<Vec<Id>> {
        let Some(m) = self.stack.iter().rposition(|i| matches!(i, Item::Mark)) else {
            return Err(PickleError::NoMark {
                op: opname(op),
                pos: self.op_pos,
            });
        };
        let items = self
            .stack
            .drain(m + 1..)
            .filter_map(|i| match i {
                Item::Ref(id) => Some(id),
                Item::Mark => None,
            })
            .collect();
        self.stack.pop();
        Ok(items)
    }
    fn pop_n(&mut self, op: u8, n: usize) -> Res<Vec<Id>> {
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.pop(op)?);
        }
        items.reverse();
        Ok(items)
    }
    fn leaf(&self, id: Id) -> Option<&Value> {
        match &self.nodes[id] {
            Node::Leaf(v) => Some(v),
            _ => None,
        }
    }
    fn kind(&self, id: Id) -> String {
        match &self.nodes[id] {
            Node::Leaf(v) => v.kind(),
            Node::List(_) => "list".into(),
            Node::Tuple(_) => "tuple".into(),
            Node::Dict(_) => "dict".into(),
            Node::Set(_) => "set".into(),
            Node::Object { .. } => "object".into(),
            Node::PersId(_) => "persistent id".into(),
        }
    }

    fn set_items(&mut self, op: u8, kvs: Vec<Id>) -> Res<()> {
        if kvs.len() % 2 == 1 {
            return Err(self.invalid(op, "odd number of items for a dict"));
        }
        let target = self.top(op)?;
        let kind = self.kind(target);
        let Node::Dict(entries) = &mut self.nodes[target] else {
            return Err(self.invalid(op, format!("target is a {kind}, not a dict")));
        };
        entries.extend(kvs.chunks_exact(2).map(|c| (c[0], c[1])));
        Ok(())
    }

    fn append_items(&mut self, op: u8, items: Vec<Id>) -> Res<()> {
        let target = self.top(op)?;
        let kind = self.kind(target);
        match &mut self.nodes[target] {
            Node::List(xs) | Node::Set(xs) => xs.extend(items),
            // `list` subclasses unpickled through REDUCE/NEWOBJ: keep the items as args.
            Node::Object { args, .. } => args.extend(items),
            _ => return Err(self.invalid(op, format!("target is a {kind}, not a list"))),
        }
        Ok(())
    }

    /// `callable(*args)`, symbolically. Dict constructors become real dicts so that later
    /// `SETITEMS` can fill them.
    fn call(&mut self, callable: Id, args: Vec<Id>) {
        let is_dict = self.leaf(callable).is_some_and(|c| {
            c.is_global("collections", "OrderedDict")
                || c.is_global("builtins", "dict")
                || c.is_global("__builtin__", "dict")
        });
        if is_dict && args.is_empty() {
            return self.push(Node::Dict(Vec::new()));
        }
        if is_dict && args.len() == 1 {
            if let Node::List(items) = &self.nodes[args[0]] {
                // OrderedDict([(k, v), ...]) as older pickles emit it.
                let kv: Option<Vec<(Id, Id)>> = items
                    .iter()
                    .map(|&it| match &self.nodes[it] {
                        Node::Tuple(p) | Node::List(p) if p.len() == 2 => Some((p[0], p[1])),
                        _ => None,
                    })
                    .collect();
                if let Some(kv) = kv {
                    return self.push(Node::Dict(kv));
                }
            }
        }
        self.push(Node::Object {
            callable,
            args,
            state: None,
        })
    }

    fn args_tuple(&self, op: u8, id: Id) -> Res<Vec<Id>> {
        match &self.nodes[id] {
            Node::Tuple(xs) => Ok(xs.clone()),
            _ => Err(self.invalid(op, format!("args are a {}", self.kind(id)))),
        }
    }

    fn memo_put(&mut self, op: u8, key: u64) -> Res<()> {
        let id = self.top(op)?;
        self.memo.insert(key, id);
        Ok(())
    }
    fn memo_get(&mut self, key: u64) -> Res<()> {
        let id = *self.memo.get(&key).ok_or(PickleError::MissingMemo {
            key,
            pos: self.op_pos,
        })?;
        self.stack.push(Item::Ref(id));
        Ok(())
    }

    /// Builds the value tree of node `id`. Shared nodes are copied, bounded by `budget`
    /// nodes in all; depth is bounded by [`MAX_DEPTH`], which also rejects cycles.
    fn materialise(&self, id: Id, depth: usize, budget: &mut usize) -> Res<Value> {
        if depth > MAX_DEPTH {
            return Err(PickleError::TooDeep { pos: self.pos });
        }
        if *budget == 0 {
            return Err(PickleError::TooLarge { pos: self.pos });
        }
        *budget -= 1;
        let d = depth + 1;
        let many = |xs: &[Id], budget: &mut usize| -> Res<Vec<Value>> {
            xs.iter().map(|&x| self.materialise(x, d, budget)).collect()
        };
        Ok(match &self.nodes[id] {
            Node::Leaf(v) => v.clone(),
            Node::List(xs) => Value::List(many(xs, budget)?),
            Node::Tuple(xs) => Value::Tuple(many(xs, budget)?),
            Node::Set(xs) => Value::Set(many(xs, budget)?),
            Node::Dict(kv) => {
                // Python semantics: a repeated key keeps its first position and its last value.
                let mut out: Vec<(Value, Value)> = Vec::with_capacity(kv.len());
                let mut index: HashMap<KeyRepr, usize> = HashMap::new();
                for &(k, v) in kv {
                    let k = self.materialise(k, d, budget)?;
                    let v = self.materialise(v, d, budget)?;
                    let repr = match &k {
                        Value::Str(s) => Some(KeyRepr::Str(s.clone())),
                        Value::Int(i) => Some(KeyRepr::Int(*i)),
                        _ => None,
                    };
                    match repr {
                        Some(r) => match index.get(&r) {
                            Some(&i) => out[i].1 = v,
                            None => {
                                index.insert(r, out.len());
                                out.push((k, v));
                            }
                        },
                        None => out.push((k, v)),
                    }
                }
                Value::Dict(out)
            }
            Node::Object {
                callable,
                args,
                state,
            } => Value::Object {
                callable: Box::new(self.materialise(*callable, d, budget)?),
                args: many(args, budget)?,
                state: match state {
                    Some(s) => Some(Box::new(self.materialise(*s, d, budget)?)),
                    None => None,
                },
            },
            Node::PersId(p) => Value::PersId(Box::new(self.materialise(*p, d, budget)?)),
        })
    }

    fn run(&mut self) -> Res<Id> {
        loop {
            if self.pos >= self.data.len() {
                return Err(PickleError::NoStop);
            }
            self.op_pos = self.pos;
            let op = self.u8("opcode")?;
            match op {
                0x80 => {
                    let p = self.u8("protocol")?;
                    if !(2..=5).contains(&p) {
                        return Err(PickleError::Protocol(p));
                    }
                }
                0x95 => {
                    // FRAME: a length hint only.
                    self.u64("frame length")?;
                }
                b'.' => return self.pop(op),
                b'(' => self.stack.push(Item::Mark),
                b'0' => {
                    if self.stack.pop().is_none() {
                        return Err(PickleError::StackUnderflow {
                            op: "POP",
                            pos: self.op_pos,
                        });
                    }
                }
                b'1' => {
                    self.pop_mark(op)?;
                }
                b'2' => {
                    let id = self.top(op)?;
                    self.stack.push(Item::Ref(id));
                }
                // Constants.
                b'N' => self.push_leaf(Value::None),
                0x88 => self.push_leaf(Value::Bool(true)),
                0x89 => self.push_leaf(Value::Bool(false)),
                // Integers.
                b'J' => {
                    let v = self.u32("BININT")? as i32;
                    self.push_leaf(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8("BININT1")?;
                    self.push_leaf(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16("BININT2")?;
                    self.push_leaf(Value::Int(v as i64))
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8("LONG1 length")? as u64
                    } else {
                        let n = self.u32("LONG4 length")? as i32;
                        if n < 0 {
                            return Err(self.invalid(op, "negative length"));
                        }
                        n as u64
                    };
                    let n = self.len_of(op, n)?;
                    let bytes = self.take(n, "long bytes")?;
                    self.push_leaf(decode_long(bytes))
                }
                b'I' | b'L' => {
                    let line = self.line("INT/LONG text")?;
                    let s = std::str::from_utf8(line)
                        .map_err(|_| self.invalid(op, "not ASCII"))?
                        .trim_end_matches('L');
                    let v = match s {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(
                            s.parse::<i64>()
                                .map_err(|_| self.invalid(op, format!("bad integer {s:?}")))?,
                        ),
                    };
                    self.push_leaf(v)
                }
                // Floats.
                b'G' => {
                    let b = self.take(8, "BINFLOAT")?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push_leaf(Value::Float(f64::from_be_bytes(a)))
                }
                b'F' => {
                    let line = self.line("FLOAT text")?;
                    let v = std::str::from_utf8(line)
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                        .ok_or_else(|| self.invalid(op, "bad float"))?;
                    self.push_leaf(Value::Float(v))
                }
                // Strings.
                0x8c | b'X' | 0x8d => {
                    let n = match op {
                        0x8c => self.u8("SHORT_BINUNICODE length")? as u64,
                        b'X' => self.u32("BINUNICODE length")? as u64,
                        _ => self.u64("BINUNICODE8 length")?,
                    };
                    let n = self.len_of(op, n)?;
                    let b = self.take(n, "unicode string")?;
                    let s = self.utf8(op, b)?;
                    self.push_leaf(Value::Str(s))
                }
                b'U' | b'T' => {
                    // Python 2 `str`: text if it is UTF-8, bytes otherwise.
                    let n = if op == b'U' {
                        self.u8("SHORT_BINSTRING length")? as u64
                    } else {
                        let n = self.u32("BINSTRING length")? as i32;
                        if n < 0 {
                            return Err(self.invalid(op, "negative length"));
                        }
                        n as u64
                    };
                    let n = self.len_of(op, n)?;
                    let b = self.take(n, "string")?;
                    let v = match std::str::from_utf8(b) {
                        Ok(s) => Value::Str(s.to_owned()),
                        Err(_) => Value::Bytes(b.to_vec()),
                    };
                    self.push_leaf(v)
                }
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => self.u8("SHORT_BINBYTES length")? as u64,
                        b'B' => self.u32("BINBYTES length")? as u64,
                        _ => self.u64("BINBYTES8 length")?,
                    };
                    let n = self.len_of(op, n)?;
                    let b = self.take(n, "bytes")?;
                    self.push_leaf(Value::Bytes(b.to_vec()))
                }
                // Containers.
                b'}' => self.push(Node::Dict(Vec::new())),
                b']' => self.push(Node::List(Vec::new())),
                b')' => self.push(Node::Tuple(Vec::new())),
                0x8f => self.push(Node::Set(Vec::new())),
                b'l' => {
                    let items = self.pop_mark(op)?;
                    self.push(Node::List(items))
                }
                b't' => {
                    let items = self.pop_mark(op)?;
                    self.push(Node::Tuple(items))
                }
                0x91 => {
                    let items = self.pop_mark(op)?;
                    self.push(Node::Set(items))
                }
                0x85..=0x87 => {
                    let items = self.pop_n(op, (op - 0x84) as usize)?;
                    self.push(Node::Tuple(items))
                }
                b'd' => {
                    let items = self.pop_mark(op)?;
                    self.push(Node::Dict(Vec::new()));
                    self.set_items(op, items)?;
                }
                b's' => {
                    let items = self.pop_n(op, 2)?;
                    self.set_items(op, items)?;
                }
                b'u' => {
                    let items = self.pop_mark(op)?;
                    self.set_items(op, items)?;
                }
                b'a' => {
                    let v = self.pop(op)?;
                    self.append_items(op, vec![v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark(op)?;
                    self.append_items(op, items)?;
                }
                // Memo.
                b'q' => {
                    let k = self.u8("BINPUT key")? as u64;
                    self.memo_put(op, k)?
                }
                b'r' => {
                    let k = self.u32("LONG_BINPUT key")? as u64;
                    self.memo_put(op, k)?
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memo_put(op, k)?
                }
                b'p' => {
                    let line = self.line("PUT key")?;
                    let k = parse_decimal(line).ok_or_else(|| self.invalid(op, "bad memo key"))?;
                    self.memo_put(op, k)?
                }
                b'h' => {
                    let k = self.u8("BINGET key")? as u64;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32("LONG_BINGET key")? as u64;
                    self.memo_get(k)?
                }
                b'g' => {
                    let line = self.line("GET key")?;
                    let k = parse_decimal(line).ok_or_else(|| self.invalid(op, "bad memo key"))?;
                    self.memo_get(k)?
                }
                // Globals and objects.
                b'c' => {
                    let module = self.line("GLOBAL module")?;
                    let module = self.utf8(op, module)?;
                    let name = self.line("GLOBAL name")?;
                    let name = self.utf8(op, name)?;
                    self.push_leaf(Value::Global { module, name })
                }
                0x93 => {
                    let name = self.pop(op)?;
                    let module = self.pop(op)?;
                    let v = match (self.leaf(module), self.leaf(name)) {
                        (Some(Value::Str(module)), Some(Value::Str(name))) => Value::Global {
                            module: module.clone(),
                            name: name.clone(),
                        },
                        _ => return Err(self.invalid(op, "module and name must be strings")),
                    };
                    self.push_leaf(v)
                }
                b'R' | 0x81 => {
                    let args = self.pop(op)?;
                    let callable = self.pop(op)?;
                    let args = self.args_tuple(op, args)?;
                    self.call(callable, args)
                }
                0x92 => {
                    let kwargs = self.pop(op)?;
                    let args = self.pop(op)?;
                    let cls = self.pop(op)?;
                    let mut args = self.args_tuple(op, args)?;
                    if !matches!(&self.nodes[kwargs], Node::Dict(kv) if kv.is_empty()) {
                        args.push(kwargs);
                    }
                    self.call(cls, args)
                }
                b'o' => {
                    let mut items = self.pop_mark(op)?;
                    if items.is_empty() {
                        return Err(self.invalid(op, "no class"));
                    }
                    let cls = items.remove(0);
                    self.call(cls, items)
                }
                b'i' => {
                    let module = self.line("INST module")?;
                    let module = self.utf8(op, module)?;
                    let name = self.line("INST name")?;
                    let name = self.utf8(op, name)?;
                    let items = self.pop_mark(op)?;
                    let cls = self.alloc(Node::Leaf(Value::Global { module, name }));
                    self.call(cls, items)
                }
                b'b' => {
                    let st = self.pop(op)?;
                    let target = self.top(op)?;
                    let kind = self.kind(target);
                    match &mut self.nodes[target] {
                        Node::Object { state, .. } => *state = Some(st),
                        // OrderedDict attributes (torch's `_metadata`): not part of the mapping.
                        Node::Dict(_) => {}
                        _ => return Err(self.invalid(op, format!("cannot set state on a {kind}"))),
                    }
                }
                b'Q' => {
                    let pid = self.pop(op)?;
                    self.push(Node::PersId(pid))
                }
                b'P' => {
                    let line = self.line("PERSID")?;
                    let s = self.utf8(op, line)?;
                    let pid = self.alloc(Node::Leaf(Value::Str(s)));
                    self.push(Node::PersId(pid))
                }
                0x82..=0x84 | 0x97 | 0x98 | b'S' | b'V' => {
                    return Err(PickleError::UnsupportedOpcode {
                        op,
                        name: opname(op),
                        pos: self.op_pos,
                    })
                }
                _ => {
                    return Err(PickleError::UnknownOpcode {
                        op,
                        pos: self.op_pos,
                    })
                }
            }
        }
    }
}

fn parse_decimal(line: &[u8]) -> Option<u64> {
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

/// Decodes a little-endian two's-complement integer (LONG1/LONG4 payload).
fn decode_long(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Int(0);
    }
    if bytes.len() <= 8 {
        let neg = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut a = if neg { [0xffu8; 8] } else { [0u8; 8] };
        a[..bytes.len()].copy_from_slice(bytes);
        return Value::Int(i64::from_le_bytes(a));
    }
    // Longer encodings may still fit (redundant sign bytes).
    let neg = bytes[bytes.len() - 1] & 0x80 != 0;
    let fill = if neg { 0xff } else { 0 };
    if bytes[8..].iter().all(|&b| b == fill) && ((bytes[7] & 0x80 != 0) == neg) {
        let mut a = [0u8; 8];
        a.copy_from_slice(&bytes[..8]);
        return Value::Int(i64::from_le_bytes(a));
    }
    Value::BigInt(bytes.to_vec())
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::None => write!(f, "None"),
            Value::Bool(b) => write!(f, "{}", if *b { "True" } else { "False" }),
            Value::Int(i) => write!(f, "{i}"),
            Value::BigInt(b) => write!(f, "<int of {} bytes>", b.len()),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            other => write!(f, "<{}>", other.kind()),
        }
    }
}

//! Field validation of manifests: every wire struct of a manifest kind
//! denies unknown fields, and [`decode`] turns serde's first unknown field
//! into either an error (`strict`, the default), or a pruned field reported
//! back to the caller (`warn`: the caller prints one line per field;
//! `ignore`: silently dropped), the way `kubectl --field-validation` does.
//!
//! [`field_tree`] walks a wire type without any input and lists every field
//! it knows, where it accepts any value (holes), and whether each struct
//! refuses unknown fields: the strictness tests are derived from it, so a
//! field or struct added later cannot escape them.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

/// What to do with a field the schema of its object does not define
/// (`--field-validation`, as kubectl spells it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldValidation {
    /// Refuse the file: one error line naming the object and the field path.
    #[default]
    Strict,
    /// Drop the field and report it (one warning line per field).
    Warn,
    /// Drop the field silently.
    Ignore,
}

impl std::str::FromStr for FieldValidation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" | "Strict" => Ok(FieldValidation::Strict),
            "warn" | "Warn" => Ok(FieldValidation::Warn),
            "ignore" | "Ignore" => Ok(FieldValidation::Ignore),
            other => Err(format!("{other:?} is not one of strict, warn, ignore")),
        }
    }
}

impl fmt::Display for FieldValidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldValidation::Strict => "strict",
            FieldValidation::Warn => "warn",
            FieldValidation::Ignore => "ignore",
        })
    }
}

/// A decoding problem: the field path (`spec.podSelector.matchLabel`, `.`
/// for the whole object) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub msg: String,
}

/// What [`decode`] returns besides the value.
#[derive(Debug, Clone, Default)]
pub struct Decoded {
    /// The object without the fields that were dropped (`warn`/`ignore`);
    /// the input itself under `strict`.
    pub value: Value,
    /// Paths of the dropped fields, in the order found.
    pub ignored: Vec<String>,
}

/// Decodes `value` into `T` (whose structs deny unknown fields) under
/// `mode`. An unknown field is an error under `strict`; otherwise it is
/// removed from the object and decoding starts again.
pub fn decode<T: DeserializeOwned>(
    value: &Value,
    mode: FieldValidation,
) -> Result<(T, Decoded), FieldError> {
    let mut value = value.clone();
    let mut ignored = Vec::new();
    loop {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return Ok((t, Decoded { value, ignored })),
            Err(e) => {
                let path = e.path().clone();
                let raw = e.into_inner().to_string();
                let shown = path.to_string();
                match unknown_field_message(&raw) {
                    Some(msg) if mode == FieldValidation::Strict => {
                        return Err(FieldError { path: shown, msg })
                    }
                    Some(msg) => {
                        if !remove_at(&mut value, &path) {
                            return Err(FieldError { path: shown, msg });
                        }
                        ignored.push(shown);
                    }
                    None => {
                        return Err(FieldError {
                            path: shown,
                            msg: raw.lines().next().unwrap_or_default().to_string(),
                        })
                    }
                }
            }
        }
    }
}

/// serde's ``unknown field `x`, expected `a` or `b` `` as
/// `unknown field; expected a or b`; `None` for any other error.
pub fn unknown_field_message(raw: &str) -> Option<String> {
    let rest = raw.strip_prefix("unknown field `")?;
    let (_, rest) = rest.split_once('`')?;
    let rest = rest.trim_start_matches(',').trim();
    let expected = if rest == "there are no fields" {
        "no fields".to_string()
    } else {
        rest.strip_prefix("expected ")
            .unwrap_or(rest)
            .replace('`', "")
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    Some(format!("unknown field; expected {expected}"))
}

/// Removes the mapping entry the path ends at.
fn remove_at(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segs: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut at = value;
    for s in parents {
        at = match (s, at) {
            (Segment::Seq { index }, Value::Sequence(seq)) => match seq.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Map { key }, Value::Mapping(m)) => match m.get_mut(key.as_str()) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, at) {
        (Segment::Map { key }, Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        _ => false,
    }
}

// ---- the field tree ----

/// The shape a wire type accepts, found by [`field_tree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// A struct: its fields in declaration order, and whether it refuses a
    /// field it does not know.
    Struct {
        fields: Vec<(&'static str, Shape)>,
        denies_unknown: bool,
    },
    /// A list of the inner shape.
    Seq(Box<Shape>),
    /// A mapping with free keys (labels, annotations).
    Map,
    /// A scalar (string, number, bool).
    Scalar,
    /// Any value, kept as it is and checked later by hand (e.g. an
    /// int-or-string port).
    Any,
    /// Any value, accepted and not read (a field Kubernetes defines and
    /// weir ignores on purpose).
    Ignored,
}

/// One field of a tree, flattened: its path (`spec.ingress[].from[].podSelector`)
/// and its shape without children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldEntry {
    pub path: String,
    pub kind: EntryKind,
}

/// [`Shape`] without children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Struct,
    Seq,
    Map,
    Scalar,
    Any,
    Ignored,
}

impl Shape {
    /// Every field under this shape, depth first, with `prefix` as the path
    /// of the shape itself (`""` for the top).
    pub fn entries(&self, prefix: &str) -> Vec<FieldEntry> {
        let mut out = Vec::new();
        self.walk(prefix, &mut out);
        out
    }

    fn walk(&self, path: &str, out: &mut Vec<FieldEntry>) {
        match self {
            Shape::Struct { fields, .. } => {
                for (name, shape) in fields {
                    let p = if path.is_empty() {
                        name.to_string()
                    } else {
                        format!("{path}.{name}")
                    };
                    out.push(FieldEntry {
                        path: p.clone(),
                        kind: shape.kind(),
                    });
                    shape.walk(&p, out);
                }
            }
            Shape::Seq(inner) => inner.walk(&format!("{path}[]"), out),
            _ => {}
        }
    }

    fn kind(&self) -> EntryKind {
        match self {
            Shape::Struct { .. } => EntryKind::Struct,
            Shape::Seq(inner) => match **inner {
                Shape::Struct { .. } => EntryKind::Struct,
                _ => EntryKind::Seq,
            },
            Shape::Map => EntryKind::Map,
            Shape::Scalar => EntryKind::Scalar,
            Shape::Any => EntryKind::Any,
            Shape::Ignored => EntryKind::Ignored,
        }
    }

    /// Paths of every struct (the top is `""`) and whether it refuses
    /// unknown fields.
    pub fn structs(&self) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        fn go(s: &Shape, path: &str, out: &mut Vec<(String, bool)>) {
            match s {
                Shape::Struct {
                    fields,
                    denies_unknown,
                } => {
                    out.push((path.to_string(), *denies_unknown));
                    for (name, shape) in fields {
                        let p = if path.is_empty() {
                            name.to_string()
                        } else {
                            format!("{path}.{name}")
                        };
                        go(shape, &p, out);
                    }
                }
                Shape::Seq(inner) => go(inner, &format!("{path}[]"), out),
                _ => {}
            }
        }
        go(self, "", &mut out);
        out
    }
}

/// Walks `T` without input: every struct is offered every field it
/// declares once, lists one element, options are present. Then each struct
/// is offered one field it does not know, to learn whether it refuses it.
pub fn field_tree<T: DeserializeOwned>() -> Shape {
    let shape = trace::<T>(None).0;
    let structs = shape.structs();
    let mut denies = std::collections::BTreeMap::new();
    for (path, _) in &structs {
        let (_, err) = trace::<T>(Some(path.clone()));
        let refused = err.is_some_and(|e| e.starts_with("unknown field"));
        denies.insert(path.clone(), refused);
    }
    fn mark(s: &mut Shape, path: &str, denies: &std::collections::BTreeMap<String, bool>) {
        match s {
            Shape::Struct {
                fields,
                denies_unknown,
            } => {
                *denies_unknown = denies.get(path).copied().unwrap_or(false);
                for (name, shape) in fields {
                    let p = if path.is_empty() {
                        name.to_string()
                    } else {
                        format!("{path}.{name}")
                    };
                    mark(shape, &p, denies);
                }
            }
            Shape::Seq(inner) => mark(inner, &format!("{path}[]"), denies),
            _ => {}
        }
    }
    let mut shape = shape;
    mark(&mut shape, "", &denies);
    shape
}

/// A field no wire struct declares, offered by the probe.
const PROBE_FIELD: &str = "weirProbeUnknownField";

fn trace<T: DeserializeOwned>(probe: Option<String>) -> (Shape, Option<String>) {
    let slot = Rc::new(RefCell::new(None));
    let tracer = Tracer {
        path: String::new(),
        probe: probe.map(Rc::new),
        out: slot.clone(),
    };
    let err = T::deserialize(tracer).err().map(|e| e.0);
    let shape = slot.borrow_mut().take().unwrap_or(Shape::Any);
    (shape, err)
}

#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        TraceError(msg.to_string())
    }
}

type Slot = Rc<RefCell<Option<Shape>>>;

struct Tracer {
    path: String,
    probe: Option<Rc<String>>,
    out: Slot,
}

impl Tracer {
    fn put(&self, s: Shape) {
        *self.out.borrow_mut() = Some(s);
    }
    fn child(&self, path: String, out: Slot) -> Tracer {
        Tracer {
            path,
            probe: self.probe.clone(),
            out,
        }
    }
}

macro_rules! scalar {
    ($($name:ident => $visit:ident($($v:expr)?)),* $(,)?) => {
        $(fn $name<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
            self.put(Shape::Scalar);
            v.$visit($($v)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Tracer {
    type Error = TraceError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        self.put(Shape::Any);
        v.visit_unit()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        self.put(Shape::Ignored);
        v.visit_unit()
    }

    scalar! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i8(1),
        deserialize_i16 => visit_i16(1),
        deserialize_i32 => visit_i32(1),
        deserialize_i64 => visit_i64(1),
        deserialize_u8 => visit_u8(1),
        deserialize_u16 => visit_u16(1),
        deserialize_u32 => visit_u32(1),
        deserialize_u64 => visit_u64(1),
        deserialize_f32 => visit_f32(1.0),
        deserialize_f64 => visit_f64(1.0),
        deserialize_char => visit_char('a'),
        deserialize_str => visit_str("a"),
        deserialize_string => visit_str("a"),
        deserialize_bytes => visit_bytes(b"a"),
        deserialize_byte_buf => visit_bytes(b"a"),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_str("a"),
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        v.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, TraceError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        let inner: Slot = Rc::new(RefCell::new(None));
        let r = v.visit_seq(OneElement {
            tracer: Some(self.child(format!("{}[]", self.path), inner.clone())),
        });
        let shape = inner.borrow_mut().take().unwrap_or(Shape::Any);
        self.put(Shape::Seq(Box::new(shape)));
        r
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, TraceError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        self.put(Shape::Map);
        v.visit_map(de::value::MapDeserializer::<
            std::iter::Empty<(&str, &str)>,
            TraceError,
        >::new(std::iter::empty()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, TraceError> {
        let probe = self.probe.as_deref().is_some_and(|p| *p == self.path);
        let collected = Rc::new(RefCell::new(Vec::new()));
        let r = v.visit_map(Fields {
            parent: &self,
            keys: fields,
            next: 0,
            probe,
            collected: collected.clone(),
        });
        let fields = collected.borrow_mut().drain(..).collect();
        self.put(Shape::Struct {
            fields,
            denies_unknown: false,
        });
        r
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, TraceError> {
        self.put(Shape::Scalar);
        let first = variants.first().copied().unwrap_or("a");
        v.visit_enum(first.into_deserializer())
    }
}

struct OneElement {
    tracer: Option<Tracer>,
}

impl<'de> de::SeqAccess<'de> for OneElement {
    type Error = TraceError;
    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, TraceError> {
        match self.tracer.take() {
            Some(t) => seed.deserialize(t).map(Some),
            None => Ok(None),
        }
    }
}

struct Fields<'a> {
    parent: &'a Tracer,
    keys: &'static [&'static str],
    /// Index of the next key; `usize::MAX` while the probe field is pending.
    next: usize,
    probe: bool,
    collected: Rc<RefCell<Vec<(&'static str, Shape)>>>,
}

impl Fields<'_> {
    fn current(&self) -> &'static str {
        if self.next == usize::MAX {
            PROBE_FIELD
        } else {
            self.keys[self.next - 1]
        }
    }
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        if self.probe {
            self.probe = false;
            self.next = usize::MAX;
            let key: de::value::StrDeserializer<'_, TraceError> = PROBE_FIELD.into_deserializer();
            return seed.deserialize(key).map(Some);
        }
        if self.next == usize::MAX {
            self.next = 0;
        }
        if self.next >= self.keys.len() {
            return Ok(None);
        }
        self.next += 1;
        let key: de::value::StrDeserializer<'_, TraceError> =
            self.keys[self.next - 1].into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        let name = self.current();
        let slot: Slot = Rc::new(RefCell::new(None));
        let path = if self.parent.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.parent.path)
        };
        let r = seed.deserialize(self.parent.child(path, slot.clone()));
        if name != PROBE_FIELD {
            let shape = slot.borrow_mut().take().unwrap_or(Shape::Any);
            self.collected.borrow_mut().push((name, shape));
        }
        r
    }
}

//! YAML documents as `serde_json::Value` trees that remember the line of every field.
//!
//! serde alone loses positions, and users need `file:line` on every diagnostic, including the
//! ones the compiler raises long after parsing ("VirtualService names unknown gateway" points
//! at `spec.gateways[1]`). So we build the tree ourselves from yaml-rust2's marked events and
//! record, for every path (`spec.ports[0].number`), the line it starts on.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Where each field of one document starts: path -> 1-based line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    lines: HashMap<String, usize>,
    start: usize,
}

impl Positions {
    /// The line of `path`, or of its nearest ancestor that has one, or the document start.
    pub fn line_of(&self, path: &str) -> usize {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return *l;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.start,
            }
        }
    }

    /// Move every line down by `by` (for YAML embedded in a string, such as the `istio`
    /// ConfigMap's `data.mesh`).
    pub fn shift(&mut self, by: usize) {
        for v in self.lines.values_mut() {
            *v += by;
        }
        self.start += by;
    }

    /// The first line of the document.
    pub fn start(&self) -> usize {
        self.start
    }

    /// A copy whose paths are relative to `prefix` (used for the items of a `kind: List`).
    pub fn subtree(&self, prefix: &str) -> Positions {
        let mut lines = HashMap::new();
        for (k, v) in &self.lines {
            if let Some(rest) = k.strip_prefix(prefix) {
                let rest = rest.strip_prefix('.').unwrap_or(rest);
                if rest.is_empty()
                    || k.len() > prefix.len() && !k[prefix.len()..].starts_with(['.', '['])
                {
                    continue;
                }
                lines.insert(rest.to_string(), *v);
            }
        }
        let start = self.lines.get(prefix).copied().unwrap_or(self.start);
        Positions { lines, start }
    }
}

/// One parsed YAML document.
#[derive(Debug, Clone)]
pub struct Document {
    pub value: Value,
    pub positions: Positions,
}

/// A YAML syntax (or structure) error with its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub line: usize,
    pub message: String,
}

/// Deepest nesting of collections accepted. Kubernetes objects stay far below it; beyond it
/// the recursive consumers of the tree (serde, `Drop`) could exhaust the stack.
pub const MAX_DEPTH: usize = 128;

/// Most values alias expansion (`*name`) may add to one document: anchors that alias each other
/// grow exponentially (a "billion laughs" document).
pub const MAX_ALIAS_EXPANSION: usize = 100_000;

/// Parse a multi-document YAML stream. Empty documents (only comments, or `---` with nothing
/// after it) are dropped, as kubectl does.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, YamlError> {
    let mut builder = Builder::default();
    // A byte-order mark (editors on Windows write one) is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser::new_from_str(text);
    // Pull events one at a time rather than `Parser::load`, which recurses once per nesting
    // level and overflows the stack on deeply nested block collections; stop at the first
    // error (the builder also bounds nesting depth and alias expansion).
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| YamlError {
            line: e.marker().line(),
            message: e.info().to_string(),
        })?;
        let end = ev == Event::StreamEnd;
        builder.on_event(ev, mark);
        if let Some(err) = builder.error.take() {
            return Err(err);
        }
        if end {
            break;
        }
    }
    Ok(builder
        .docs
        .into_iter()
        .filter(|d| !d.value.is_null())
        .collect())
}

enum Frame {
    Seq {
        items: Vec<Value>,
        path: String,
        anchor: usize,
    },
    Map {
        map: Map<String, Value>,
        path: String,
        pending_key: Option<String>,
        anchor: usize,
    },
}

#[derive(Default)]
struct Builder {
    docs: Vec<Document>,
    stack: Vec<Frame>,
    positions: Positions,
    anchors: HashMap<usize, Value>,
    error: Option<YamlError>,
    doc_start: usize,
    /// Values added by alias expansion so far (see [`MAX_ALIAS_EXPANSION`]).
    expanded: usize,
}

impl Builder {
    /// The path the next value will have, given the innermost container.
    fn next_path(&self) -> Option<String> {
        match self.stack.last() {
            None => Some(String::new()),
            Some(Frame::Seq { items, path, .. }) => Some(format!("{path}[{}]", items.len())),
            Some(Frame::Map {
                path, pending_key, ..
            }) => pending_key.as_ref().map(|k| join(path, k)),
        }
    }

    fn fail(&mut self, line: usize, message: String) {
        if self.error.is_none() {
            self.error = Some(YamlError { line, message });
        }
    }

    /// Attach a finished value to its parent (or finish the document).
    fn push_value(&mut self, v: Value, line: usize) {
        let mut error = None;
        match self.stack.last_mut() {
            None => {
                let positions = std::mem::take(&mut self.positions);
                self.docs.push(Document {
                    value: v,
                    positions: Positions {
                        start: self.doc_start,
                        ..positions
                    },
                });
            }
            Some(Frame::Seq { items, .. }) => items.push(v),
            Some(Frame::Map {
                map,
                pending_key,
                path,
                ..
            }) => match pending_key.take() {
                Some(k) => {
                    if map.contains_key(&k) {
                        error = Some(format!("duplicate key {:?}", join(path, &k)));
                    } else {
                        map.insert(k, v);
                    }
                }
                None => {
                    // A key. Keys must be scalars; Kubernetes objects never use complex keys.
                    let key = match v {
                        Value::String(s) => s,
                        Value::Null => "null".to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        _ => {
                            error = Some("mapping keys must be scalars".into());
                            String::new()
                        }
                    };
                    if map.contains_key(&key) {
                        // Reported here, at the key's line, not where its value ends.
                        error = Some(format!("duplicate key {:?}", join(path, &key)));
                    }
                    let p = join(path, &key);
                    self.positions.lines.insert(p, line);
                    *pending_key = Some(key);
                }
            },
        }
        if let Some(e) = error {
            self.fail(line, e);
        }
    }

    fn is_key_position(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame::Map {
                pending_key: None,
                ..
            })
        )
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        if self.stack.is_empty()
            && matches!(
                ev,
                Event::Scalar(..)
                    | Event::Alias(_)
                    | Event::SequenceStart(..)
                    | Event::MappingStart(..)
            )
        {
            // The document starts where its content does, not at a `---` line before it.
            self.doc_start = line;
        }
        match ev {
            Event::DocumentStart => {
                self.doc_start = line;
                self.positions = Positions::default();
                self.anchors.clear();
                self.expanded = 0;
            }
            Event::DocumentEnd => {
                // A document with only comments produces no value: record nothing.
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let key = self.is_key_position();
                let v = if key {
                    Value::String(text)
                } else {
                    scalar(text, style)
                };
                if !key && let Some(p) = self.next_path() {
                    self.positions.lines.entry(p).or_insert(line);
                }
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                self.push_value(v, line);
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(v) => {
                    self.expanded = self.expanded.saturating_add(count_values(&v));
                    if self.expanded > MAX_ALIAS_EXPANSION {
                        self.fail(
                            line,
                            format!("aliases expand to more than {MAX_ALIAS_EXPANSION} values"),
                        );
                        return;
                    }
                    self.push_value(v, line)
                }
                // The parser keeps anchors across documents; YAML does not.
                None => self.fail(
                    line,
                    "alias to an anchor not defined in this document".into(),
                ),
            },
            Event::SequenceStart(anchor, _) => {
                if self.is_key_position() {
                    self.fail(line, "mapping keys must be scalars".into());
                    return;
                }
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(line, format!("nested deeper than {MAX_DEPTH} levels"));
                    return;
                }
                let path = self.next_path().unwrap_or_default();
                self.positions.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    path,
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                if self.is_key_position() {
                    self.fail(line, "mapping keys must be scalars".into());
                    return;
                }
                if self.stack.len() >= MAX_DEPTH {
                    self.fail(line, format!("nested deeper than {MAX_DEPTH} levels"));
                    return;
                }
                let path = self.next_path().unwrap_or_default();
                self.positions.lines.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Map {
                    map: Map::new(),
                    path,
                    pending_key: None,
                    anchor,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (v, anchor) = match self.stack.pop() {
                    Some(Frame::Seq { items, anchor, .. }) => (Value::Array(items), anchor),
                    Some(Frame::Map { map, anchor, .. }) => (Value::Object(map), anchor),
                    None => return,
                };
                if anchor > 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                self.push_value(v, line);
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}

/// The number of values in `v` (itself included). Depth is bounded by [`MAX_DEPTH`].
fn count_values(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.iter().map(count_values).fold(1, usize::saturating_add),
        Value::Object(m) => m.values().map(count_values).fold(1, usize::saturating_add),
        _ => 1,
    }
}

/// YAML 1.2 core-schema typing for plain scalars, plus the YAML 1.1 spellings Kubernetes
/// (go-yaml) still reads as booleans. Quoted and block scalars are always strings.
fn scalar(text: String, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(text);
    }
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(n) = parse_int(&text) {
        return Value::Number(n);
    }
    let looks_float = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_float
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text)
}

fn parse_int(text: &str) -> Option<Number> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if neg {
        text.parse::<i64>().ok().map(Number::from)
    } else {
        digits.parse::<u64>().ok().map(Number::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_nested_fields() {
        let text = "a: 1\nspec:\n  ports:\n  - number: 80\n    name: http\n  - number: 443\n";
        let docs = parse_documents(text).unwrap_or_default();
        assert_eq!(docs.len(), 1);
        let p = &docs[0].positions;
        assert_eq!(p.line_of("spec.ports[0].number"), 4);
        assert_eq!(p.line_of("spec.ports[0].name"), 5);
        assert_eq!(p.line_of("spec.ports[1]"), 6);
        assert_eq!(p.line_of("spec.ports[1].protocol"), 6);
        assert_eq!(p.line_of("spec.nothing"), 2);
        assert_eq!(docs[0].value["spec"]["ports"][1]["number"], 443);
    }

    #[test]
    fn multi_document_and_empty_documents() {
        let text = "# c\n---\nkind: A\n---\n# only a comment\n---\nkind: B\n";
        let docs = parse_documents(text).unwrap_or_default();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].value["kind"], "B");
        assert_eq!(docs[1].positions.line_of("kind"), 7);
    }

    #[test]
    fn scalars_are_typed_like_kubernetes() {
        let docs = parse_documents("a: \"80\"\nb: 80\nc: true\nd: 1.5\ne: 1.2.3.4\nf: ~\n")
            .unwrap_or_default();
        let v = &docs[0].value;
        assert_eq!(v["a"], "80");
        assert_eq!(v["b"], 80);
        assert_eq!(v["c"], true);
        assert_eq!(v["d"], 1.5);
        assert_eq!(v["e"], "1.2.3.4");
        assert!(v["f"].is_null());
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_have_lines() {
        let e = parse_documents("a: 1\nb:\n  c: 1\n  c: 2\n").err();
        assert_eq!(e.map(|e| e.line), Some(4));
        let e = parse_documents("a: [1, 2\nb: 3\n").err();
        assert!(e.is_some());
    }

    #[test]
    fn subtree_rebases_paths() {
        let docs = parse_documents("items:\n- kind: A\n  spec:\n    x: 1\n").unwrap_or_default();
        let sub = docs[0].positions.subtree("items[0]");
        assert_eq!(sub.line_of("spec.x"), 4);
        assert_eq!(sub.start(), 2);
    }
}

//! Kubernetes-style YAML manifests (`apiVersion: berth.dev/v1`) to and from berth's model, with
//! errors that name the file, line, column and field.
//!
//! Pure: the caller reads files; this crate only sees text. [`parse`] splits a file into
//! documents and maps positions back to it (`source`), reads each document as written
//! (`yaml`, whose types also give the JSON Schema) and turns it into the model by kind
//! (`kinds`).

use std::collections::BTreeMap;
use std::fmt;

use berth_model::{ServiceSpec, TaskDefinitionRef, TaskDefinitionSpec};
use schemars::JsonSchema;
use serde::Deserialize;

mod kinds;
mod source;
mod yaml;

use source::Source;

pub const API_VERSION: &str = "berth.dev/v1";
/// The kinds this version understands.
pub const KINDS: &[&str] = &["TaskDefinition", "Service", "Task", "Secret"];

/// One document of a manifest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// 1-based line where the document starts.
    pub line: usize,
    pub metadata: Metadata,
    pub object: Object,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Metadata {
    /// The labels and annotations as the model keeps them.
    pub fn object_meta(&self) -> berth_model::ObjectMeta {
        berth_model::ObjectMeta {
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    TaskDefinition(TaskDefinitionSpec),
    /// A service; with an inline `template`, `spec.task_definition` is the service's name
    /// and the template is registered as the next revision of that family when it changed.
    Service {
        spec: Box<ServiceSpec>,
        template: Option<TaskDefinitionSpec>,
    },
    /// One-off tasks: `count` copies of `task_definition` (with an inline `template`, the
    /// family is the manifest's name). Applying the same document again within the client
    /// token's hour runs nothing new.
    Task {
        task_definition: TaskDefinitionRef,
        template: Option<TaskDefinitionSpec>,
        count: u32,
    },
    /// A secret's keys and values (`stringData`, and `data` in base64, as Kubernetes).
    Secret(SecretValues),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::TaskDefinition(_) => "TaskDefinition",
            Object::Service { .. } => "Service",
            Object::Task { .. } => "Task",
            Object::Secret(_) => "Secret",
        }
    }
}

/// A secret's values in clear, on their way to the servers. Prints its keys only.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValues(pub BTreeMap<String, Vec<u8>>);

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretValues")
            .field(&self.0.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// The JSON Schema of one manifest document (either kind), for editors to validate manifests
/// with (`berth schema`; the repository ships it as `crates/berth-manifest/berth.schema.json`).
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(yaml::AnyDocument);
    schema.insert("title".into(), "berth manifest (berth.dev/v1)".into());
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// The largest manifest file berth reads.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// How deeply a manifest may nest mappings and sequences (berth's own go about 8 deep).
pub const MAX_NESTING: usize = 32;

/// Refuses, before any YAML parsing, a manifest too large or too deeply nested to be one of
/// berth's: the parser's time and memory would grow with either. Nesting is counted from
/// flow brackets (`[`, `{`) outside quotes, and from each block line's indentation steps and
/// leading `- ` markers.
fn check_shape(file: &str, text: &str) -> Result<(), ManifestError> {
    let refuse = |line: usize, message: String| ManifestError {
        file: file.to_owned(),
        line,
        column: 1,
        message,
    };
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(refuse(
            1,
            format!(
                "{} bytes is too large; a manifest file has at most {MAX_MANIFEST_BYTES} bytes (split it)",
                text.len()
            ),
        ));
    }
    // Indentations of the block levels open at each line.
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    for (n, line) in text.lines().enumerate() {
        let content = line.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let indent = line.len() - content.len();
        if flow == 0 {
            while indents.last().is_some_and(|i| *i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            let dashes = content
                .split_inclusive(' ')
                .take_while(|w| w.trim() == "-")
                .count();
            if indents.len() + dashes > MAX_NESTING {
                return Err(refuse(
                    n + 1,
                    format!("nested more than {MAX_NESTING} levels deep; no berth manifest is"),
                ));
            }
        }
        let (mut single, mut double) = (false, false);
        for c in content.chars() {
            match c {
                '\'' if !double => single = !single,
                '"' if !single => double = !double,
                '#' if !single && !double && flow == 0 => break,
                '[' | '{' if !single && !double => {
                    flow += 1;
                    if indents.len() + flow > MAX_NESTING {
                        return Err(refuse(
                            n + 1,
                            format!(
                                "nested more than {MAX_NESTING} levels deep; no berth manifest is"
                            ),
                        ));
                    }
                }
                ']' | '}' if !single && !double => flow = flow.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Parses every document of `text`; `file` names it in errors. Either every document is
/// valid, or the first error is returned. Files too large or too deeply nested are refused
/// before they are parsed.
pub fn parse(file: &str, text: &str) -> Result<Vec<Document>, ManifestError> {
    check_shape(file, text)?;
    source::split_documents(text)
        .iter()
        .map(|(first_line, doc)| parse_document(&Source::new(file, *first_line, doc)))
        .collect()
}

/// One document: its header, then the conversion its kind calls for, then its namespace.
fn parse_document(doc: &Source<'_>) -> Result<Document, ManifestError> {
    let header: yaml::Header = doc.deserialize()?;
    match header.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => {
            return Err(doc.at_start(format!(
                "apiVersion {other:?} is not supported; use {API_VERSION}"
            )))
        }
        None => return Err(doc.at_start(format!("apiVersion is missing; use {API_VERSION}"))),
    }
    let (metadata, object) = match header.kind.unwrap_or_default().as_str() {
        "TaskDefinition" => kinds::task_definition(doc)?,
        "Service" => kinds::service(doc)?,
        "Task" => kinds::task(doc)?,
        "Secret" => kinds::secret(doc)?,
        "" => return Err(doc.at_start(format!("kind is missing; use one of {}", KINDS.join(", ")))),
        other => {
            return Err(doc.at_start(format!(
                "kind {other:?} is not supported; use one of {}",
                KINDS.join(", ")
            )))
        }
    };
    if let Some(ns) = &metadata.namespace {
        berth_model::validate_name("metadata.namespace", ns)
            .map_err(|e| doc.at_start(e.to_string()))?;
    }
    Ok(Document {
        line: doc.line(),
        metadata,
        object,
    })
}

#[cfg(test)]
mod tests;

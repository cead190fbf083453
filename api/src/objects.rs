//! The object kinds the control plane stores (`Service`, `Replica`, `Node`, `Event`) and their
//! validation.
//!
//! Every object is a JSON document `{kind, metadata, spec, status}`. The control plane stores it
//! under `kind/name`; `metadata.resourceVersion` is the revision of its last write and is set
//! by the store, never trusted from a client. Spec and status stay untyped JSON here so that
//! later issues can add typed kinds without changing the wire protocol.

use crate::model::API_VERSION;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The longest object name accepted (a DNS-1123 label).
pub const MAX_NAME_LEN: usize = 63;

/// The largest object document accepted, in bytes.
pub const MAX_OBJECT_BYTES: usize = 1024 * 1024;

/// Errors of object validation; each names the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectError {
    /// `kind` is not one of [`Kind`].
    #[error("kind: unknown kind {0:?} (expected Service, Replica, Node or Event)")]
    UnknownKind(String),
    /// `metadata.name` is not a DNS-1123 label.
    #[error("metadata.name: {name:?} is not a DNS-1123 label ({reason})")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The document is not valid JSON of an object.
    #[error("object: invalid JSON: {0}")]
    Json(String),
    /// The document is larger than [`MAX_OBJECT_BYTES`].
    #[error("object: {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the document.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A field disagrees with the envelope it travels in.
    #[error("{field}: {message}")]
    Mismatch {
        /// The field path.
        field: &'static str,
        /// What disagrees.
        message: String,
    },
}

/// The kinds of object the control plane stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// A desired set of identical replicas.
    Service,
    /// One scheduled instance of a service.
    Replica,
    /// A machine running an agent.
    Node,
    /// Something that happened, for humans.
    Event,
}

impl Kind {
    /// Every kind, in display order.
    pub const ALL: [Kind; 4] = [Kind::Service, Kind::Replica, Kind::Node, Kind::Event];

    /// The kind's name as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::Replica => "Replica",
            Kind::Node => "Node",
            Kind::Event => "Event",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = ObjectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ObjectError::UnknownKind(s.to_string()))
    }
}

/// Metadata common to every object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The object's name, unique within its kind (a DNS-1123 label).
    pub name: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Revision of the last write, set by the store (a decimal string, as Kubernetes has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// When the object was created (RFC 3339), set by the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

/// A stored object: kind, metadata, and untyped spec and status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Object {
    /// Always [`API_VERSION`] today.
    #[serde(rename = "apiVersion", default = "api_version")]
    pub api_version: String,
    /// The object's kind.
    pub kind: Kind,
    /// Name, labels, version.
    pub metadata: ObjectMeta,
    /// Desired state.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub spec: serde_json::Value,
    /// Observed state.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub status: serde_json::Value,
}

impl Object {
    /// A new object with empty spec and status.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Object {
            api_version: API_VERSION.to_string(),
            kind,
            metadata: ObjectMeta {
                name: name.into(),
                ..ObjectMeta::default()
            },
            spec: serde_json::Value::Null,
            status: serde_json::Value::Null,
        }
    }

    /// Parses and validates a JSON document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ObjectError> {
        if bytes.len() > MAX_OBJECT_BYTES {
            return Err(ObjectError::TooLarge {
                size: bytes.len(),
                limit: MAX_OBJECT_BYTES,
            });
        }
        let object: Object =
            serde_json::from_slice(bytes).map_err(|e| ObjectError::Json(e.to_string()))?;
        object.validate()?;
        Ok(object)
    }

    /// The JSON document of the object.
    pub fn to_json(&self) -> Vec<u8> {
        // Invariant: the types serialize infallibly (string keys, no non-finite floats can be
        // produced by serde_json::Value).
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The revision in `metadata.resourceVersion`, or 0 when unset or unparsable.
    pub fn resource_version(&self) -> u64 {
        self.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The spec as its typed form.
    ///
    /// # Errors
    /// The JSON does not match `T`; the message names the field.
    pub fn spec_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, ObjectError> {
        typed(&self.spec, "spec")
    }

    /// The status as its typed form; an absent status reads as `T::default()`.
    ///
    /// # Errors
    /// The JSON does not match `T`; the message names the field.
    pub fn status_as<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, ObjectError> {
        if self.status.is_null() {
            return Ok(T::default());
        }
        typed(&self.status, "status")
    }

    /// Replaces the spec with `spec`'s JSON.
    pub fn set_spec<T: Serialize>(&mut self, spec: &T) {
        self.spec = to_value(spec);
    }

    /// Replaces the status with `status`'s JSON.
    pub fn set_status<T: Serialize>(&mut self, status: &T) {
        self.status = to_value(status);
    }

    /// Checks the name, and for a Service its spec: typed as [`crate::model::ServiceSpec`] and
    /// semantically valid ([`crate::manifest::validate_service_spec`]).
    pub fn validate(&self) -> Result<(), ObjectError> {
        validate_name(&self.metadata.name)?;
        if self.kind == Kind::Service {
            let spec: crate::model::ServiceSpec = self.spec_as()?;
            let problems = crate::manifest::validate_service_spec(&spec);
            if !problems.is_empty() {
                let message = problems
                    .iter()
                    .map(|(path, message)| {
                        let path = path.strip_prefix("spec.").unwrap_or(path);
                        format!("{path}: {message}")
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(ObjectError::Mismatch {
                    field: "spec",
                    message,
                });
            }
        }
        Ok(())
    }
}

fn api_version() -> String {
    API_VERSION.to_string()
}

fn typed<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    field: &'static str,
) -> Result<T, ObjectError> {
    T::deserialize(value).map_err(|e| ObjectError::Mismatch {
        field,
        message: e.to_string(),
    })
}

fn to_value<T: Serialize>(value: &T) -> serde_json::Value {
    // Invariant: our model types serialize infallibly (string keys, no non-finite floats).
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// Checks that `name` is a DNS-1123 label: 1–63 of `[a-z0-9-]`, starting and ending with an
/// alphanumeric.
pub fn validate_name(name: &str) -> Result<(), ObjectError> {
    let fail = |reason| {
        Err(ObjectError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return fail("must be at most 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("must consist of lower-case letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return fail("must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_dns_labels() {
        assert!(validate_name("web-1").is_ok());
        for bad in ["", "Web", "-a", "a-", "a_b", &"a".repeat(64)] {
            let err = validate_name(bad).unwrap_err();
            assert!(err.to_string().starts_with("metadata.name:"), "{err}");
        }
    }

    #[test]
    fn kinds_parse_case_insensitively_and_reject_unknown() {
        assert_eq!("service".parse::<Kind>().unwrap(), Kind::Service);
        let err = "Pod".parse::<Kind>().unwrap_err();
        assert!(err.to_string().starts_with("kind:"));
    }

    #[test]
    fn objects_round_trip_and_validate() {
        let mut obj = Object::new(Kind::Node, "n1");
        obj.metadata.resource_version = Some("7".into());
        obj.spec = serde_json::json!({"cpu": "2"});
        let back = Object::from_json(&obj.to_json()).unwrap();
        assert_eq!(back, obj);
        assert_eq!(back.resource_version(), 7);
        let bad = br#"{"kind":"Node","metadata":{"name":"N1"}}"#;
        assert!(Object::from_json(bad).is_err());
        let unknown = br#"{"kind":"Pod","metadata":{"name":"a"}}"#;
        assert!(Object::from_json(unknown).is_err());
    }
}

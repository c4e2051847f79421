//! Which objects a list or watch returns: its label selector, its field
//! selector (checked against the fields the resource type supports) and,
//! for a watch of one object, its name.

use serde_json::Value;

use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::status::StatusError;

/// The selection of a list or watch request.
#[derive(Debug, Clone)]
pub struct ObjectFilter {
    group: String,
    kind: String,
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
    name: Option<String>,
}

impl ObjectFilter {
    /// Parses the selectors of a request for `resource`; 400 for a bad
    /// selector or a field the type does not support.
    pub fn new(
        resource: &ResourceType,
        label_selector: &str,
        field_selector: &str,
    ) -> Result<Self, StatusError> {
        let labels = if label_selector.trim().is_empty() {
            None
        } else {
            Some(LabelSelector::parse(label_selector)?)
        };
        let fields = if field_selector.trim().is_empty() {
            None
        } else {
            let fields = FieldSelector::parse(field_selector)?;
            fields.check_supported(&resource.group, &resource.kind, resource.crd.is_some())?;
            Some(fields)
        };
        Ok(Self {
            group: resource.group.clone(),
            kind: resource.kind.clone(),
            labels,
            fields,
            name: None,
        })
    }

    /// The same selection, limited to the object named `name`.
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Whether `object` is selected.
    pub fn matches(&self, object: &Value) -> bool {
        if let Some(name) = &self.name
            && object.pointer("/metadata/name").and_then(Value::as_str) != Some(name.as_str())
        {
            return false;
        }
        if let Some(labels) = &self.labels {
            let empty = serde_json::Map::new();
            let object_labels = object
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            if !labels.matches(object_labels) {
                return false;
            }
        }
        if let Some(fields) = &self.fields
            && !fields.matches(&self.group, &self.kind, object)
        {
            return false;
        }
        true
    }
}

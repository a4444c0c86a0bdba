//! Each kind's document as an [`Object`]: converted to the model, checked by the model's
//! validation, and any error placed at the manifest's field.

use berth_model::{
    ObjectMeta, ServiceSpec, TaskDefinitionRef, TaskDefinitionSpec, ValidationError,
};

use crate::source::Source;
use crate::yaml::{
    AutoscalingYaml, IngressRuleYaml, SecretDoc, ServiceDoc, TaskDefinitionDoc,
    TaskDefinitionSpecYaml, TaskDoc,
};
use crate::{ManifestError, Metadata, Object};

/// `kind: TaskDefinition`: the family is the manifest's name.
pub(crate) fn task_definition(doc: &Source<'_>) -> Result<(Metadata, Object), ManifestError> {
    let parsed: TaskDefinitionDoc = doc.deserialize()?;
    let metadata = parsed.metadata.clone();
    let mut spec = parsed.spec.into_spec(parsed.metadata.name);
    spec.meta = metadata.object_meta();
    spec.validate()
        .map_err(|e| invalid(doc, e, "family", "spec"))?;
    Ok((metadata, Object::TaskDefinition(spec)))
}

/// `kind: Service`, with a task definition reference or an inline template.
pub(crate) fn service(doc: &Source<'_>) -> Result<(Metadata, Object), ManifestError> {
    let parsed: ServiceDoc = doc.deserialize()?;
    let metadata = parsed.metadata.clone();
    let name = parsed.metadata.name;
    let (task_definition, template) = task_definition_or_template(
        doc,
        parsed.spec.task_definition,
        parsed.spec.template,
        &name,
        Default::default(),
    )?;
    let spec = ServiceSpec {
        ingress: parsed
            .spec
            .ingress
            .into_iter()
            .map(IngressRuleYaml::into_model)
            .collect(),
        deregistration_delay: parsed
            .spec
            .deregistration_delay
            .map_or(berth_model::DEFAULT_DEREGISTRATION_DELAY_SECS, |s| s.0),
        name,
        task_definition,
        desired_count: parsed.spec.desired_count,
        deployment_configuration: parsed.spec.deployment_configuration.into_model(),
        placement: parsed.spec.placement,
        autoscaling: parsed.spec.autoscaling.map(AutoscalingYaml::into_model),
        meta: metadata.object_meta(),
    };
    spec.validate()
        .map_err(|e| invalid(doc, e, "name", "spec"))?;
    let object = Object::Service {
        spec: Box::new(spec),
        template,
    };
    Ok((metadata, object))
}

/// `kind: Task`: `count` one-off tasks of a task definition reference or an inline template.
pub(crate) fn task(doc: &Source<'_>) -> Result<(Metadata, Object), ManifestError> {
    let parsed: TaskDoc = doc.deserialize()?;
    let metadata = parsed.metadata.clone();
    let name = parsed.metadata.name;
    berth_model::validate_name("metadata.name", &name)
        .map_err(|e| doc.at("metadata.name", e.message))?;
    let count = parsed.spec.count.unwrap_or(1);
    if count == 0 || count > 1000 {
        return Err(doc.at(
            "spec.count",
            format!("{count} is out of range; use 1..=1000"),
        ));
    }
    let (task_definition, template) = task_definition_or_template(
        doc,
        parsed.spec.task_definition,
        parsed.spec.template,
        &name,
        metadata.object_meta(),
    )?;
    let object = Object::Task {
        task_definition,
        template,
        count,
    };
    Ok((metadata, object))
}

/// `kind: Secret`: `stringData` (text) and `data` (base64) together, as Kubernetes; a key in
/// both is an error. Validated by the model's rules (names, keys, size).
pub(crate) fn secret(doc: &Source<'_>) -> Result<(Metadata, Object), ManifestError> {
    use base64::Engine as _;
    let parsed: SecretDoc = doc.deserialize()?;
    let metadata = parsed.metadata.clone();
    let mut data = std::collections::BTreeMap::new();
    let texts: std::collections::BTreeSet<String> =
        parsed.spec.string_data.keys().cloned().collect();
    for (key, text) in parsed.spec.string_data {
        data.insert(key, text.into_bytes());
    }
    for (key, b64) in parsed.spec.data {
        let field = format!("spec.data.{key}");
        let value = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            // Not the decoder's message: it quotes a byte of the value.
            .map_err(|_| doc.at(&field, "not base64; put text under stringData".into()))?;
        if data.insert(key.clone(), value).is_some() {
            return Err(doc.at(&field, format!("key {key} is in stringData too")));
        }
    }
    berth_model::validate_secret(&metadata.name, &data).map_err(|e| {
        let field = match e.field.strip_prefix("data.") {
            _ if e.field == "name" => "metadata.name".to_owned(),
            Some(key) if texts.contains(key) => format!("spec.stringData.{key}"),
            _ => format!("spec.{}", e.field),
        };
        doc.at(&field, e.message)
    })?;
    Ok((metadata, Object::Secret(crate::SecretValues(data))))
}

/// A document's `taskDefinition` or inline `template` (exactly one): the reference, and the
/// template as the next revision of family `name` with `meta`.
fn task_definition_or_template(
    doc: &Source<'_>,
    reference: Option<TaskDefinitionRef>,
    template: Option<TaskDefinitionSpecYaml>,
    name: &str,
    meta: ObjectMeta,
) -> Result<(TaskDefinitionRef, Option<TaskDefinitionSpec>), ManifestError> {
    match (reference, template) {
        (Some(r), None) => Ok((r, None)),
        (None, Some(t)) => {
            let mut t = t.into_spec(name.to_owned());
            t.meta = meta;
            t.validate()
                .map_err(|e| invalid(doc, e, "family", "spec.template"))?;
            let r = TaskDefinitionRef {
                family: name.to_owned(),
                revision: None,
            };
            Ok((r, Some(t)))
        }
        (Some(_), Some(_)) => Err(doc.at(
            "spec.template",
            "give either taskDefinition or template, not both".into(),
        )),
        (None, None) => Err(doc.at(
            "spec",
            "taskDefinition (family or family:revision) or an inline template is required".into(),
        )),
    }
}

/// The model's validation error `e` at the manifest's field: the model's `name_field` is
/// `metadata.name`, every other field sits below `under`.
fn invalid(doc: &Source<'_>, e: ValidationError, name_field: &str, under: &str) -> ManifestError {
    let field = if e.field == name_field {
        "metadata.name".to_owned()
    } else {
        format!("{under}.{}", e.field)
    };
    doc.at(&field, e.message)
}

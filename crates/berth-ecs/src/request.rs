//! Reading the fields of a request's JSON: each of an expected type or absent (`null` counts as
//! absent, as the SDKs never send it), and every field a call does not know refused by name.

use serde_json::{Map, Value};

use crate::protocol::EcsError;

/// A request's body (or a nested object of it) as an object; `what` names it in errors.
pub fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, EcsError> {
    value
        .as_object()
        .ok_or_else(|| EcsError::invalid(format!("{what}: a JSON object is expected")))
}

/// The fields of `object` neither supported nor ignored, as `PREFIXname`.
pub(crate) fn unsupported(
    object: &Map<String, Value>,
    supported: &[&str],
    ignored: &[&str],
    prefix: &str,
) -> Vec<String> {
    object
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, _)| k)
        .filter(|k| !supported.contains(&k.as_str()) && !ignored.contains(&k.as_str()))
        .map(|k| format!("{prefix}{k}"))
        .collect()
}

/// Refuses the fields berth does not take, naming every one.
pub fn refuse_unsupported(refused: Vec<String>) -> Result<(), EcsError> {
    if refused.is_empty() {
        return Ok(());
    }
    Err(EcsError::invalid(format!(
        "not supported by berth: {}; remove them (the README's ECS section lists what berth \
         takes)",
        refused.join(", ")
    )))
}

/// Checks that `object` holds only `supported` and `ignored` fields.
pub fn only(
    object: &Map<String, Value>,
    supported: &[&str],
    ignored: &[&str],
    prefix: &str,
) -> Result<(), EcsError> {
    refuse_unsupported(unsupported(object, supported, ignored, prefix))
}

fn present<'a>(object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    object.get(field).filter(|v| !v.is_null())
}

/// A string field.
pub fn string(object: &Map<String, Value>, field: &str) -> Result<Option<String>, EcsError> {
    match present(object, field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(EcsError::invalid(format!("{field}: a string is expected"))),
    }
}

/// A string field that must be there and not empty.
pub fn required(object: &Map<String, Value>, field: &str) -> Result<String, EcsError> {
    string(object, field)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| EcsError::invalid(format!("{field} is required")))
}

/// A list of strings.
pub fn strings(object: &Map<String, Value>, field: &str) -> Result<Option<Vec<String>>, EcsError> {
    let bad = || EcsError::invalid(format!("{field}: a list of strings is expected"));
    match present(object, field) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

/// A whole number from 0 to `u32::MAX`.
pub fn count(object: &Map<String, Value>, field: &str) -> Result<Option<u32>, EcsError> {
    match present(object, field) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| EcsError::invalid(format!("{field}: a whole number is expected"))),
    }
}

/// A true or false.
pub fn flag(object: &Map<String, Value>, field: &str) -> Result<Option<bool>, EcsError> {
    match present(object, field) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(EcsError::invalid(format!(
            "{field}: true or false is expected"
        ))),
    }
}

/// ECS `[{name, value}]` lists (environments) as a map; `at` places the list in errors.
pub fn name_values(
    value: Option<&Value>,
    at: &str,
) -> Result<std::collections::BTreeMap<String, String>, EcsError> {
    let mut out = std::collections::BTreeMap::new();
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(out);
    };
    let items = value
        .as_array()
        .ok_or_else(|| EcsError::invalid(format!("{at}: a list of {{name, value}} is expected")))?;
    for (i, item) in items.iter().enumerate() {
        let item = object(item, &format!("{at}[{i}]"))?;
        only(item, &["name", "value"], &[], &format!("{at}[{i}]."))?;
        let name = required(item, "name")
            .map_err(|_| EcsError::invalid(format!("{at}[{i}].name is required")))?;
        out.insert(name, string(item, "value")?.unwrap_or_default());
    }
    Ok(out)
}

/// A list call's page: `maxResults` (1 to `max`, `max` when absent) and `nextToken`.
pub fn page_request(
    object: &Map<String, Value>,
    max: u32,
) -> Result<(usize, Option<String>), EcsError> {
    let size = match count(object, "maxResults")? {
        None => max,
        Some(n) if (1..=max).contains(&n) => n,
        Some(n) => {
            return Err(EcsError::invalid(format!(
                "maxResults: {n} is out of range; use 1 to {max}"
            )))
        }
    };
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    Ok((size, string(object, "nextToken")?.filter(|t| !t.is_empty())))
}

/// How page tokens begin: a token of another form is refused rather than read as a name.
const TOKEN_PREFIX: &str = "berth1.";

/// One page of `items`, which are sorted by `key` (unique): those after the page `token`
/// ended at, at most `size`, and the token of the next page when more follow. A token is the
/// key of the last item given, so pages do not shift when items before them come or go.
pub fn page<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    size: usize,
    token: Option<&str>,
) -> Result<(Vec<T>, Option<String>), EcsError> {
    page_in(items, key, size, token, false)
}

/// [`page`] of `items` sorted by `key` descending when `descending`.
pub fn page_in<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    size: usize,
    token: Option<&str>,
    descending: bool,
) -> Result<(Vec<T>, Option<String>), EcsError> {
    let after = match token {
        None => None,
        Some(t) => Some(t.strip_prefix(TOKEN_PREFIX).ok_or_else(|| {
            EcsError::invalid("nextToken: not a token this endpoint gave; start again without it")
        })?),
    };
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|item| {
            after.is_none_or(|a| {
                let k = key(item);
                if descending {
                    k.as_str() < a
                } else {
                    k.as_str() > a
                }
            })
        })
        .collect();
    let next = (rest.len() > size).then(|| format!("{TOKEN_PREFIX}{}", key(&rest[size - 1])));
    rest.truncate(size);
    Ok((rest, next))
}

/// Milliseconds as the seconds (with a fraction) awsJson1_1 gives times in.
pub fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// A map as ECS's `[{key, value}]` tags.
pub fn tag_list(map: &std::collections::BTreeMap<String, String>) -> Value {
    Value::Array(
        map.iter()
            .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_have_their_type_or_are_absent_and_unknown_ones_are_named() {
        let v = json!({"a": "x", "n": 3, "b": true, "l": ["p"], "z": null, "bad": 1.5});
        let o = object(&v, "body").expect("object");
        assert_eq!(string(o, "a"), Ok(Some("x".into())));
        assert_eq!(string(o, "z"), Ok(None), "null is absent");
        assert_eq!(count(o, "n"), Ok(Some(3)));
        assert!(count(o, "bad").is_err());
        assert_eq!(flag(o, "b"), Ok(Some(true)));
        assert_eq!(strings(o, "l"), Ok(Some(vec!["p".into()])));
        assert!(string(o, "n").is_err());
        assert!(required(o, "missing").is_err());
        let e = only(o, &["a", "n"], &["b"], "x.").expect_err("unknown");
        assert!(e.message.contains("x.bad, x.l;"), "{}", e.message);
        assert!(!e.message.contains("x.z"), "a null field is absent");
    }

    #[test]
    fn pages_follow_their_tokens_and_stay_put_when_earlier_items_go() {
        let items: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let (first, next) = page(items.clone(), String::clone, 2, None).expect("page");
        assert_eq!(first, ["a", "b"]);
        let token = next.expect("more");
        // "a" goes between the calls: the second page still starts after "b".
        let (second, next) =
            page(items[1..].to_vec(), String::clone, 2, Some(&token)).expect("page");
        assert_eq!(second, ["c", "d"]);
        let (last, next) = page(items, String::clone, 2, next.as_deref()).expect("page");
        assert_eq!((last, next), (vec!["e".to_owned()], None));
        assert!(page(vec!["a".to_owned()], String::clone, 2, Some("b")).is_err());
        let down: Vec<String> = ["c", "b", "a"].map(String::from).to_vec();
        let (first, next) = page_in(down.clone(), String::clone, 2, None, true).expect("page");
        assert_eq!(first, ["c", "b"]);
        let (rest, _) = page_in(down, String::clone, 2, next.as_deref(), true).expect("page");
        assert_eq!(rest, ["a"]);
        let o = json!({"maxResults": 101});
        assert!(page_request(object(&o, "body").expect("object"), 100).is_err());
    }

    #[test]
    fn name_value_lists_become_maps() {
        let env = json!([{"name": "A", "value": "1"}, {"name": "B"}]);
        let map = name_values(Some(&env), "environment").expect("list");
        assert_eq!(map.get("A").map(String::as_str), Some("1"));
        assert_eq!(map.get("B").map(String::as_str), Some(""));
        let bad = json!([{"name": "A", "valueFrom": "x"}]);
        let e = name_values(Some(&bad), "environment").expect_err("unknown field");
        assert!(
            e.message.contains("environment[0].valueFrom"),
            "{}",
            e.message
        );
    }
}

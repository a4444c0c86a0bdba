//! Manifest files: reading them (files, directories, stdin), `apply -f` and `delete -f` of the
//! objects they describe. `diff -f` lives in `diff`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use berth_manifest::{Document, Object};

use crate::{services, Client, GlobalArgs};

/// The *.yaml and *.yml files under `dir`, recursively, in path order.
fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            manifest_files(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    Ok(())
}

/// The name and text of every manifest `files` names: `-` is stdin, a directory its files.
fn read_manifest_sources(files: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut sources = Vec::new();
    for f in files {
        if f == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("read stdin")?;
            sources.push(("<stdin>".to_owned(), text));
            continue;
        }
        let path = Path::new(f);
        if path.is_dir() {
            let mut files = Vec::new();
            manifest_files(path, &mut files)?;
            for p in files {
                let text =
                    std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
                sources.push((p.display().to_string(), text));
            }
        } else {
            let text = std::fs::read_to_string(path).with_context(|| format!("read {f}"))?;
            sources.push((f.clone(), text));
        }
    }
    Ok(sources)
}

/// Parses every manifest of `files`; nothing is sent when any document is invalid.
pub fn read_documents(files: &[String]) -> anyhow::Result<Vec<Document>> {
    let mut documents = Vec::new();
    for (name, text) in read_manifest_sources(files)? {
        documents.extend(berth_manifest::parse(&name, &text)?);
    }
    if documents.is_empty() {
        bail!("no objects found in {}", files.join(", "));
    }
    Ok(documents)
}

/// The document's namespace: its own, or `--namespace`.
pub fn namespace_of(d: &Document, global: &GlobalArgs) -> String {
    d.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| global.namespace.clone())
}

/// `berth apply -f`: registers every object; with `wait`, waits for the services' rollouts and
/// answers 1 when one failed.
pub async fn apply(
    global: &GlobalArgs,
    files: &[String],
    dry_run: bool,
    wait: Option<Duration>,
) -> anyhow::Result<i32> {
    // Parse and validate everything before storing anything.
    let documents = read_documents(files)?;
    let mut client = Client::new(global)?;
    let mut rollouts = Vec::new();
    for d in documents {
        let namespace = namespace_of(&d, global);
        match d.object {
            Object::TaskDefinition(spec) if dry_run => {
                println!("taskdefinition/{} valid (dry run)", spec.family);
            }
            Object::TaskDefinition(spec) => {
                let (def, created) =
                    crate::taskdefs::register(&mut client, &namespace, spec).await?;
                let verb = if created { "registered" } else { "unchanged" };
                println!("taskdefinition/{}:{} {verb}", def.family, def.revision);
            }
            Object::Service { spec, template } => {
                if let Some(applied) =
                    services::apply(&mut client, namespace, *spec, template, dry_run).await?
                {
                    rollouts.push(applied);
                }
            }
            Object::Task {
                task_definition,
                template,
                count,
            } => {
                crate::tasks::apply(
                    &mut client,
                    namespace,
                    &d.metadata.name,
                    task_definition,
                    template,
                    count,
                    dry_run,
                )
                .await?;
            }
            Object::Secret(_) if dry_run => {
                println!("secret/{} valid (dry run)", d.metadata.name);
            }
            Object::Secret(values) => {
                let g = GlobalArgs {
                    namespace,
                    ..global.clone()
                };
                let s = crate::secrets::put(
                    &mut client,
                    &g,
                    d.metadata.name.clone(),
                    values.0,
                    berth_proto::v1::SecretPrecondition::Unspecified,
                )
                .await?;
                println!("secret/{} applied (version {})", s.name, s.version);
            }
        }
    }
    let Some(timeout) = wait else { return Ok(0) };
    let mut code = 0;
    for r in rollouts {
        let g = GlobalArgs {
            namespace: r.service.namespace.clone(),
            ..global.clone()
        };
        let ok = services::wait(
            &mut client,
            &g,
            &r.service.name,
            r.deployment.as_deref(),
            timeout,
        )
        .await?;
        if ok {
            println!("service/{} rollout complete", r.service.name);
        } else {
            code = 1;
        }
    }
    Ok(code)
}

/// `berth delete -f`: deletes services, stops one-off tasks; task definitions stay.
pub async fn delete(global: &GlobalArgs, files: &[String]) -> anyhow::Result<()> {
    let mut client = Client::new(global)?;
    for d in read_documents(files)? {
        let namespace = namespace_of(&d, global);
        match d.object {
            Object::Service { spec, .. } => {
                services::delete(&mut client, &namespace, &spec.name).await?;
            }
            Object::TaskDefinition(spec) => {
                crate::taskdefs::deregister(&mut client, &namespace, &spec.family).await?;
            }
            Object::Task {
                task_definition, ..
            } => {
                crate::tasks::delete(
                    &mut client,
                    &namespace,
                    &d.metadata.name,
                    &task_definition.family,
                )
                .await?;
            }
            Object::Secret(_) => {
                let g = GlobalArgs {
                    namespace,
                    ..global.clone()
                };
                crate::secrets::delete(&mut client, &g, &d.metadata.name).await?;
            }
        }
    }
    Ok(())
}

//! A pod's volumes on the host (edged.md §1.4, §3.12).
//!
//! Each volume becomes a directory (or, for hostPath, a host path) under
//! `<root>/pods/<uid>/volumes/kubernetes.io~<type>/<name>` that the pod's
//! containers mount:
//!
//! | type | content |
//! |---|---|
//! | `emptyDir` | an empty directory, kept for the pod's life (`medium: Memory` is a directory too) |
//! | `hostPath` | the host path, created for `DirectoryOrCreate` / `FileOrCreate`, checked for the other types |
//! | `configMap`, `secret` | one file per key (or per listed item), from MetaManager |
//! | `downwardAPI` | the pod's fields and labels |
//! | `projected` | configMap, secret and downwardAPI sources in one directory |
//!
//! ConfigMap, Secret and downwardAPI volumes are rewritten whenever their
//! source changes, atomically as the kubelet does: the files go into a
//! fresh timestamped directory, the `..data` symlink is switched to it
//! with a rename, and each top-level name is a symlink through `..data`.
//! A reader never sees a half-written set.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use k8s_openapi::api::core::v1::{KeyToPath, Pod, Volume};
use serde_json::Value;

use super::fields;
use crate::edged::metaclient::{MetaClient, MetaError};

/// A volume's files: relative path to content and mode (`None`: the
/// volume's default mode).
pub type Files = BTreeMap<String, (Vec<u8>, Option<u32>)>;

/// Why a volume could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The ConfigMap or Secret a volume needs is not known at the edge.
    #[error("{kind} {name:?} not found")]
    SourceMissing {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A listed key is not in its ConfigMap or Secret.
    #[error("{kind} {name:?} has no key {key:?}")]
    KeyMissing {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// A hostPath of a checked type is missing or of another kind.
    #[error("hostPath {path:?} is not a {expected}")]
    HostPath {
        /// The path.
        path: String,
        /// What the type asked for.
        expected: &'static str,
    },
    /// A path in the volume escapes it or is empty.
    #[error("invalid path {0:?} in a volume")]
    BadPath(String),
    /// A volume type edged does not support.
    #[error("volume {name:?}: type not supported at the edge")]
    Unsupported {
        /// The volume's name.
        name: String,
    },
    /// MetaManager did not answer.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The filesystem refused.
    #[error("{path}: {source}")]
    Io {
        /// The path written.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The directory of the pod with `uid` under edged's `root`.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

/// Sets up every volume of `pod` and returns the host path of each, by
/// volume name. ConfigMaps and Secrets are read through `client`.
pub async fn prepare(
    root: &Path,
    pod: &Pod,
    client: &MetaClient,
) -> Result<BTreeMap<String, PathBuf>, VolumeError> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let volumes_dir = pod_dir(root, &uid).join("volumes");
    let mut paths = BTreeMap::new();
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for volume in &volumes {
        let path = prepare_one(&volumes_dir, &namespace, pod, volume, client).await?;
        paths.insert(volume.name.clone(), path);
    }
    Ok(paths)
}

async fn prepare_one(
    volumes_dir: &Path,
    namespace: &str,
    pod: &Pod,
    volume: &Volume,
    client: &MetaClient,
) -> Result<PathBuf, VolumeError> {
    let dir = |kind: &str| {
        volumes_dir
            .join(format!("kubernetes.io~{kind}"))
            .join(&volume.name)
    };
    if volume.empty_dir.is_some() {
        let path = dir("empty-dir");
        std::fs::create_dir_all(&path).map_err(io(&path))?;
        return Ok(path);
    }
    if let Some(host) = &volume.host_path {
        return host_path(&host.path, host.type_.as_deref().unwrap_or(""));
    }
    if let Some(source) = &volume.config_map {
        let files = config_map_files(
            client,
            namespace,
            source.name.as_str(),
            source.items.as_deref(),
            source.optional.unwrap_or(false),
        )
        .await?;
        let path = dir("configmap");
        write_atomically(&path, &files, mode(source.default_mode))?;
        return Ok(path);
    }
    if let Some(source) = &volume.secret {
        let name = source.secret_name.clone().unwrap_or_default();
        let files = secret_files(
            client,
            namespace,
            &name,
            source.items.as_deref(),
            source.optional.unwrap_or(false),
        )
        .await?;
        let path = dir("secret");
        write_atomically(&path, &files, mode(source.default_mode))?;
        return Ok(path);
    }
    if let Some(source) = &volume.downward_api {
        let files = downward_files(pod, source.items.as_deref().unwrap_or_default())?;
        let path = dir("downward-api");
        write_atomically(&path, &files, mode(source.default_mode))?;
        return Ok(path);
    }
    if let Some(projected) = &volume.projected {
        let mut files = BTreeMap::new();
        for source in projected.sources.as_deref().unwrap_or_default() {
            if let Some(cm) = &source.config_map {
                files.extend(
                    config_map_files(
                        client,
                        namespace,
                        &cm.name,
                        cm.items.as_deref(),
                        cm.optional.unwrap_or(false),
                    )
                    .await?,
                );
            }
            if let Some(secret) = &source.secret {
                files.extend(
                    secret_files(
                        client,
                        namespace,
                        &secret.name,
                        secret.items.as_deref(),
                        secret.optional.unwrap_or(false),
                    )
                    .await?,
                );
            }
            if let Some(downward) = &source.downward_api {
                files.extend(downward_files(
                    pod,
                    downward.items.as_deref().unwrap_or_default(),
                )?);
            }
            if source.service_account_token.is_some() {
                return Err(VolumeError::Unsupported {
                    name: format!("{} (serviceAccountToken)", volume.name),
                });
            }
        }
        let path = dir("projected");
        write_atomically(&path, &files, mode(projected.default_mode))?;
        return Ok(path);
    }
    Err(VolumeError::Unsupported {
        name: volume.name.clone(),
    })
}

/// The default file mode (0644 unless given).
fn mode(mode: Option<i32>) -> u32 {
    mode.and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644)
}

/// A hostPath volume: created or checked according to its type.
fn host_path(path: &str, kind: &str) -> Result<PathBuf, VolumeError> {
    let p = PathBuf::from(path);
    let check = |ok: bool, expected: &'static str| {
        if ok {
            Ok(p.clone())
        } else {
            Err(VolumeError::HostPath {
                path: path.to_owned(),
                expected,
            })
        }
    };
    match kind {
        "DirectoryOrCreate" => {
            std::fs::create_dir_all(&p).map_err(io(&p))?;
            Ok(p)
        }
        "FileOrCreate" => {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(io(&p))?;
            Ok(p)
        }
        "Directory" => check(p.is_dir(), "directory"),
        "File" => check(p.is_file(), "file"),
        "Socket" | "CharDevice" | "BlockDevice" => check(p.exists(), "device or socket"),
        _ => Ok(p),
    }
}

/// The files of a ConfigMap volume or projection: `data` as text and
/// `binaryData` decoded, all keys or the listed items.
async fn config_map_files(
    client: &MetaClient,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
) -> Result<Files, VolumeError> {
    let Some(object) = client
        .get(namespace, kedge_message::resource_type::CONFIGMAP, name)
        .await?
    else {
        return missing(optional, "configmap", name);
    };
    let mut data = BTreeMap::new();
    for (key, value) in object
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        data.insert(
            key.clone(),
            value.as_str().unwrap_or_default().as_bytes().to_vec(),
        );
    }
    for (key, value) in object
        .get("binaryData")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        data.insert(key.clone(), decode(value));
    }
    select_items("configmap", name, data, items, optional)
}

/// The files of a Secret volume or projection, `data` decoded.
async fn secret_files(
    client: &MetaClient,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: bool,
) -> Result<Files, VolumeError> {
    let Some(object) = client
        .get(namespace, kedge_message::resource_type::SECRET, name)
        .await?
    else {
        return missing(optional, "secret", name);
    };
    let data = secret_data(&object);
    select_items("secret", name, data, items, optional)
}

/// A Secret's `data`, decoded (and `stringData`, should it be present).
pub fn secret_data(object: &Value) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = object
        .get("data")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), decode(v)))
        .collect();
    for (key, value) in object
        .get("stringData")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        data.insert(
            key.clone(),
            value.as_str().unwrap_or_default().as_bytes().to_vec(),
        );
    }
    data
}

fn decode(value: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap_or_default())
        .unwrap_or_default()
}

fn missing<T: Default>(optional: bool, kind: &'static str, name: &str) -> Result<T, VolumeError> {
    if optional {
        Ok(T::default())
    } else {
        Err(VolumeError::SourceMissing {
            kind,
            name: name.to_owned(),
        })
    }
}

/// Every key as a file of its own name, or only `items` at their paths.
fn select_items(
    kind: &'static str,
    name: &str,
    mut data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
) -> Result<Files, VolumeError> {
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return Ok(data.into_iter().map(|(k, v)| (k, (v, None))).collect());
    };
    let mut files = BTreeMap::new();
    for item in items {
        match data.remove(&item.key) {
            Some(bytes) => {
                files.insert(
                    item.path.clone(),
                    (bytes, item.mode.and_then(|m| u32::try_from(m).ok())),
                );
            }
            None if optional => {}
            None => {
                return Err(VolumeError::KeyMissing {
                    kind,
                    name: name.to_owned(),
                    key: item.key.clone(),
                });
            }
        }
    }
    Ok(files)
}

/// The files of a downwardAPI volume: each item's field of the pod.
fn downward_files(
    pod: &Pod,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
) -> Result<Files, VolumeError> {
    let mut files = BTreeMap::new();
    for item in items {
        let value = if let Some(field) = &item.field_ref {
            fields::pod_field(pod, &field.field_path, None).unwrap_or_default()
        } else if let Some(resource) = &item.resource_field_ref {
            fields::resource_field(pod, resource).unwrap_or_default()
        } else {
            String::new()
        };
        files.insert(
            item.path.clone(),
            (
                value.into_bytes(),
                item.mode.and_then(|m| u32::try_from(m).ok()),
            ),
        );
    }
    Ok(files)
}

/// Writes `files` (relative path → content and mode) into `dir` the way
/// the kubelet's atomic writer does; does nothing when `dir` already
/// holds exactly these files.
pub fn write_atomically(dir: &Path, files: &Files, default_mode: u32) -> Result<(), VolumeError> {
    for path in files.keys() {
        let relative = Path::new(path);
        if path.is_empty()
            || relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            || path.starts_with("..")
        {
            return Err(VolumeError::BadPath(path.clone()));
        }
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let data_link = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data_link)
        && same_files(&dir.join(current), files)
    {
        return Ok(());
    }
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let fresh = dir.join(&stamp);
    for (path, (bytes, mode)) in files {
        let target = fresh.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut file = std::fs::File::create(&target).map_err(io(&target))?;
        file.write_all(bytes).map_err(io(&target))?;
        file.sync_all().map_err(io(&target))?;
        std::fs::set_permissions(
            &target,
            std::fs::Permissions::from_mode(mode.unwrap_or(default_mode) & 0o777),
        )
        .map_err(io(&target))?;
    }
    let previous = std::fs::read_link(&data_link).ok();
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link).map_err(io(&tmp_link))?;
    std::fs::rename(&tmp_link, &data_link).map_err(io(&data_link))?;
    // Top-level names: a symlink through ..data for each first component.
    let mut tops: Vec<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_owned))
        .collect();
    tops.dedup();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::read_link(&link).is_err() {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link).map_err(io(&link))?;
        }
    }
    // Names no longer present, and the previous generation.
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(previous) = previous
        && previous != Path::new(&stamp)
    {
        let _ = std::fs::remove_dir_all(dir.join(previous));
    }
    Ok(())
}

/// Whether the generation at `current` holds exactly `files`.
fn same_files(current: &Path, files: &Files) -> bool {
    let mut count = 0;
    let mut stack = vec![current.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return false;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                count += 1;
            }
        }
    }
    count == files.len()
        && files.iter().all(|(path, (bytes, _))| {
            std::fs::read(current.join(path)).is_ok_and(|have| &have == bytes)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> Files {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), (v.as_bytes().to_vec(), None)))
            .collect()
    }

    #[test]
    fn the_atomic_writer_switches_generations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let volume = dir.path().join("config");
        write_atomically(&volume, &files(&[("a", "1"), ("b", "2")]), 0o644).expect("written");
        assert_eq!(std::fs::read_to_string(volume.join("a")).expect("a"), "1");
        let first = std::fs::read_link(volume.join("..data")).expect("..data");

        write_atomically(&volume, &files(&[("a", "1"), ("b", "2")]), 0o644).expect("same");
        assert_eq!(
            std::fs::read_link(volume.join("..data")).expect("..data"),
            first
        );

        write_atomically(&volume, &files(&[("a", "3")]), 0o644).expect("changed");
        assert_eq!(std::fs::read_to_string(volume.join("a")).expect("a"), "3");
        assert!(!volume.join("b").exists(), "a removed key goes");
        assert!(!volume.join(&first).exists(), "the old generation goes");
        let mode = std::fs::metadata(volume.join("a"))
            .expect("a")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn paths_may_not_escape_the_volume() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["../x", "/etc/x", "a/../../x", ""] {
            assert!(
                matches!(
                    write_atomically(dir.path(), &files(&[(bad, "x")]), 0o644),
                    Err(VolumeError::BadPath(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn listed_items_pick_keys() {
        let data = BTreeMap::from([("k".to_owned(), b"v".to_vec())]);
        let items = [KeyToPath {
            key: "k".into(),
            path: "dir/file".into(),
            mode: Some(0o600),
        }];
        let picked =
            select_items("configmap", "c", data.clone(), Some(&items), false).expect("picked");
        assert_eq!(picked["dir/file"], (b"v".to_vec(), Some(0o600)));
        let absent = [KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
        }];
        assert!(select_items("configmap", "c", data.clone(), Some(&absent), false).is_err());
        assert!(select_items("configmap", "c", data, Some(&absent), true).is_ok());
        assert!(matches!(
            host_path("/nonexistent-kedge", "Directory"),
            Err(VolumeError::HostPath { .. })
        ));
    }
}

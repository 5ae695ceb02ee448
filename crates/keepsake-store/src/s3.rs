//! Packs in an S3-compatible bucket, through the `object_store` crate.
//!
//! The store is synchronous; each call is spawned onto this backend's own runtime and
//! waited for over a channel, which works from blocking threads and runtime workers alike.
//! A pack is created with `If-None-Match: *` (two writers never overwrite one name), read by
//! ranged GETs (one chunk never pulls its whole pack), and acknowledged only after the PUT is.

use crate::backend::{Backend, BackendError, ObjectInfo, answer_spans, merge_reads};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use keepsake_core::OwnRuntime;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::Arc;
use std::time::Duration;

/// Objects larger than this go up in parts of this size.
const PART_SIZE: usize = 32 << 20;
/// Chunks of one pack at most this far apart are read in one request: a round trip
/// costs more than reading a few unwanted kilobytes.
const SPAN_GAP: u64 = 256 << 10;
/// No merged read grows past this, so a reply never holds much more than was asked.
const SPAN_MAX: u64 = 16 << 20;
/// Requests in flight at once for one batch of reads.
const PARALLEL_READS: usize = 8;

/// Where the bucket is: parsed from `s3://BUCKET?endpoint=…&region=…&prefix=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// The endpoint URL (`None`: AWS itself).
    pub endpoint: Option<String>,
    /// The region (`us-east-1` unless given).
    pub region: String,
    /// A folder inside the bucket for every object.
    pub prefix: String,
}

impl S3Location {
    /// Parses an `s3://` address; credentials never belong in it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3:// address"))?;
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        let bucket = bucket.trim_end_matches('/');
        if bucket.is_empty() || bucket.contains('/') {
            return Err(format!("{url:?} names no bucket (s3://BUCKET?endpoint=…)"));
        }
        let mut location = Self {
            bucket: bucket.to_string(),
            endpoint: None,
            region: "us-east-1".into(),
            prefix: String::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "endpoint" => location.endpoint = Some(value.to_string()),
                "region" => location.region = value.to_string(),
                "prefix" => location.prefix = value.trim_matches('/').to_string(),
                "access_key_id" | "secret_access_key" | "secret" | "key" => {
                    return Err(
                        "credentials do not belong in the address: set AWS_ACCESS_KEY_ID and \
                         AWS_SECRET_ACCESS_KEY, or write ~/.aws/credentials"
                            .into(),
                    );
                }
                other => return Err(format!("unknown s3 setting {other:?}")),
            }
        }
        Ok(location)
    }
}

/// Objects in one bucket.
pub struct S3Backend {
    store: Arc<AmazonS3>,
    prefix: String,
    runtime: OwnRuntime,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl S3Backend {
    /// Connects with credentials from the AWS environment variables (or the shared
    /// credentials file), and proves the bucket is there and the credentials work.
    pub fn connect(location: &S3Location) -> Result<Self, BackendError> {
        Self::connect_with(location, None)
    }

    /// Connects with the given access key and secret (else as `connect` finds them).
    pub fn connect_with(
        location: &S3Location,
        credentials: Option<(&str, &str)>,
    ) -> Result<Self, BackendError> {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&location.bucket)
            .with_region(&location.region)
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            // No SHA-256 of every pack body in the signature: each chunk in it carries its
            // BLAKE3, checked on every read and by scrub, so the signature would add a pass
            // over every byte (on both ends) and no protection the store relies on.
            .with_unsigned_payload(true)
            // A bucket that is down must fail the call within seconds: the device then says
            // the cloud is unreachable and retries on its own schedule, instead of a store
            // call hanging in retries while its status still says "syncing".
            .with_retry(object_store::RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(4),
                ..Default::default()
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(120)),
            );
        if let Some(endpoint) = &location.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some((key, secret)) = credentials {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
        } else if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
            && let Some((key, secret)) = shared_credentials()
        {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
        }
        let store = builder
            .build()
            .map_err(|e| BackendError::Denied(format!("the bucket settings are wrong: {e}")))?;
        let runtime = OwnRuntime::new("keepsake-s3", 2)?;
        let backend = Self {
            store: Arc::new(store),
            prefix: location.prefix.clone(),
            runtime,
        };
        // A missing bucket or refused credentials fail here, at start, not at first upload.
        backend.list("probe-")?;
        Ok(backend)
    }

    fn path(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, object_store::Error>> + Send + 'static,
    ) -> Result<T, BackendError> {
        self.runtime
            .run(work)
            .ok_or_else(|| BackendError::Unavailable("the bucket task stopped".into()))?
            .map_err(classify)
    }
}

/// The same failure again, for every read one failed request served.
fn copy_error(e: &BackendError) -> BackendError {
    match e {
        BackendError::NotFound(name) => BackendError::NotFound(name.clone()),
        BackendError::Full => BackendError::Full,
        BackendError::Exists(name) => BackendError::Exists(name.clone()),
        BackendError::Denied(text) => BackendError::Denied(text.clone()),
        BackendError::Unavailable(text) => BackendError::Unavailable(text.clone()),
        BackendError::Io(io) => BackendError::Io(std::io::Error::new(io.kind(), io.to_string())),
    }
}

fn shared_credentials() -> Option<(String, String)> {
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials"))
        })?;
    let text = std::fs::read_to_string(file).ok()?;
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let (mut inside, mut key, mut secret) = (false, None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line.trim_matches(['[', ']']).trim() == profile;
        } else if inside && let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "aws_access_key_id" => key = Some(v.trim().to_string()),
                "aws_secret_access_key" => secret = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    Some((key?, secret?))
}

fn classify(e: object_store::Error) -> BackendError {
    use object_store::Error as E;
    match e {
        E::NotFound { path, .. } => BackendError::NotFound(path),
        E::AlreadyExists { path, .. } => BackendError::Exists(path),
        E::Unauthenticated { source, .. } | E::PermissionDenied { source, .. } => {
            BackendError::Denied(format!("the bucket refused the credentials: {source}"))
        }
        other => {
            let text = other.to_string();
            if text.contains("NoSuchBucket") {
                BackendError::Denied(format!("the bucket does not exist: {text}"))
            } else if text.contains("InvalidAccessKeyId")
                || text.contains("SignatureDoesNotMatch")
                || text.contains("AccessDenied")
            {
                BackendError::Denied(format!("the bucket refused the credentials: {text}"))
            } else if text.contains("EntityTooLarge") || text.contains("QuotaExceeded") {
                BackendError::Full
            } else {
                BackendError::Unavailable(format!("the bucket is unavailable: {text}"))
            }
        }
    }
}

impl Backend for S3Backend {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), BackendError> {
        self.put_parts(name, &[bytes])
    }

    fn put_parts(&self, name: &str, parts: &[&[u8]]) -> Result<(), BackendError> {
        let path = self.path(name);
        let store = self.store.clone();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total <= PART_SIZE {
            let payload: PutPayload = parts
                .iter()
                .map(|p| bytes::Bytes::copy_from_slice(p))
                .collect();
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            return match self.run(async move { store.put_opts(&path, payload, opts).await }) {
                // A retried PUT whose first try landed holds these very bytes: done. Any
                // other object of that name stays as it is.
                Err(BackendError::Exists(_)) => {
                    let there = self.get(name)?;
                    if there.len() == total && there == parts.concat() {
                        Ok(())
                    } else {
                        Err(BackendError::Exists(name.to_string()))
                    }
                }
                other => other.map(|_| ()),
            };
        }
        let whole = bytes::Bytes::from(parts.concat());
        self.run(async move {
            let upload = store.put_multipart(&path).await?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            writer.put(whole);
            writer.finish().await
        })
        .map(|_| ())
    }

    fn get_range(&self, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let path = self.path(name);
        let store = self.store.clone();
        let bytes = self.run(async move { store.get_range(&path, offset..offset + len).await })?;
        if bytes.len() as u64 != len {
            return Err(BackendError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{name}: {} of {len} bytes at {offset}", bytes.len()),
            )));
        }
        Ok(bytes.to_vec())
    }

    fn get_ranges(&self, reads: &[(&str, u64, u64)]) -> Vec<Result<Bytes, BackendError>> {
        let spans = merge_reads(reads, SPAN_GAP, SPAN_MAX);
        let requests: Vec<(ObjectPath, u64, u64)> = spans
            .iter()
            .map(|(name, start, end, _)| (self.path(name), *start, *end))
            .collect();
        let store = self.store.clone();
        let fetched = self.run(async move {
            let results: Vec<_> = futures::stream::iter(requests)
                .map(|(path, start, end)| {
                    let store = store.clone();
                    async move { store.get_range(&path, start..end).await }
                })
                .buffered(PARALLEL_READS)
                .collect()
                .await;
            Ok(results)
        });
        let fetched = match fetched {
            Ok(fetched) => fetched.into_iter().map(|r| r.map_err(classify)).collect(),
            Err(e) => {
                let text = e.to_string();
                return reads
                    .iter()
                    .map(|_| Err(BackendError::Unavailable(text.clone())))
                    .collect();
            }
        };
        answer_spans(reads.len(), spans, fetched, |_, _, _, e| Err(copy_error(e)))
    }

    fn get(&self, name: &str) -> Result<Vec<u8>, BackendError> {
        let path = self.path(name);
        let store = self.store.clone();
        let bytes = self.run(async move { store.get(&path).await?.bytes().await })?;
        Ok(bytes.to_vec())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let store = self.store.clone();
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        // Listing is by folder in object_store; list the folder and filter by name prefix.
        let folder = match prefix.rfind('/') {
            Some(i) => Some(self.path(&prefix[..i])),
            None if self.prefix.is_empty() => None,
            None => Some(ObjectPath::from(self.prefix.as_str())),
        };
        let metas =
            self.run(async move { store.list(folder.as_ref()).try_collect::<Vec<_>>().await })?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.as_ref().strip_prefix(&strip)?.to_string();
                name.starts_with(prefix)
                    .then_some(ObjectInfo { name, size: m.size })
            })
            .collect())
    }

    fn delete(&self, name: &str) -> Result<(), BackendError> {
        let path = self.path(name);
        let store = self.store.clone();
        match self.run(async move { store.delete(&path).await }) {
            Err(BackendError::NotFound(_)) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_refuse_credentials() {
        let l =
            S3Location::parse("s3://photos?endpoint=http://127.0.0.1:9000&region=eu-1&prefix=k/")
                .unwrap();
        assert_eq!(l.bucket, "photos");
        assert_eq!(l.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(l.region, "eu-1");
        assert_eq!(l.prefix, "k");
        assert!(
            S3Location::parse("s3://b?secret_access_key=x")
                .unwrap_err()
                .contains("AWS_")
        );
        assert!(S3Location::parse("s3://").is_err());
        assert!(S3Location::parse("http://b").is_err());
    }
}
